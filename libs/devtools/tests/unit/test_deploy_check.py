"""deploy/ checked offline (`make validate-deploy` runs the same checks): the rendered kustomizations, their
rules, docker-compose.yml and the settings the code reads. Each check is also shown to catch what it is for."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from lumiku_devtools import deploy_check as dc
from lumiku_generation.settings import GenerationSettings


@pytest.fixture(scope="module")
def base() -> list[dc.Obj]:
    return dc.render(dc.K8S)


@pytest.fixture
def objects(base: list[dc.Obj]) -> list[dc.Obj]:
    return copy.deepcopy(base)


def worker(objects: list[dc.Obj], name: str) -> dc.Obj:
    return dc.find(objects, "Deployment", name)


def test_the_kustomizations_pass_the_kubernetes_and_crd_schemas(base: list[dc.Obj]) -> None:
    assert dc.schema_problems(base) == []
    assert dc.schema_problems(dc.render(dc.K8S / "infra")) == []


def test_the_render_applies_namespace_labels_images_and_patches(base: list[dc.Obj]) -> None:
    gateway = dc.find(base, "Deployment", "gateway")
    assert gateway["metadata"]["namespace"] == "lumiku"
    assert gateway["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "lumiku"
    assert "app.kubernetes.io/part-of" not in gateway["spec"]["selector"]["matchLabels"]  # includeSelectors: false
    assert gateway["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/lumiku:0.1.0"
    assert "namespace" not in dc.find(base, "Namespace", "lumiku")["metadata"]
    infra = dc.render(dc.K8S / "infra")
    assert dc.find(infra, "ConfigMap", "lumiku-config")["data"]["S3_ENDPOINT_URL"] == "http://minio:9000"
    assert dc.find(infra, "ConfigMap", "lumiku-config")["data"]["S3_BUCKET"] == "lumiku-avatars"  # merged, not replaced
    assert dc.find(infra, "StatefulSet", "postgres")["metadata"]["namespace"] == "lumiku"
    assert len(of_names(infra)) == len(infra)  # the base is included once


def of_names(objects: list[dc.Obj]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def test_the_render_refuses_kustomize_fields_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(ValueError, match="commonLabels"):
        dc.render(tmp_path)


def test_schemas_catch_misspelt_and_mistyped_fields(objects: list[dc.Obj]) -> None:
    dc.find(objects, "Deployment", "projects")["spec"]["replica"] = 2
    trigger = dc.find(objects, "ScaledObject", "generation-worker")["spec"]["triggers"][0]
    trigger["metadata"]["value"] = "four"
    dc.find(objects, "ServiceMonitor", "lumiku-apis")["spec"]["endpoints"][0]["intervall"] = "30s"
    problems = "\n".join(dc.schema_problems(objects))
    assert "Deployment/projects" in problems and "replica" in problems
    assert "ScaledObject/generation-worker" in problems and "four" in problems
    assert "ServiceMonitor/lumiku-apis" in problems and "intervall" in problems


def test_the_manifests_keep_their_rules(base: list[dc.Obj]) -> None:
    assert dc.policy_problems(base) == []
    names = of_names(base)
    for service in dc.SERVICE_NAMES:  # every service has its API and its worker, each with a PDB
        assert {("Deployment", service), ("Deployment", f"{service}-worker")} <= names
        assert {("PodDisruptionBudget", service), ("PodDisruptionBudget", f"{service}-worker")} <= names
        assert ("HorizontalPodAutoscaler", service) in names
    assert ("ScaledObject", "generation-worker") in names and ("ScaledObject", "usage-worker") in names


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda o: _container(o, "credits")["securityContext"].pop("readOnlyRootFilesystem"), "readOnlyRootFilesystem"),
        (lambda o: _container(o, "usage")["securityContext"]["capabilities"].update(drop=[]), "drop ALL"),
        (lambda o: _pod(o, "avatars")["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
        (lambda o: _container(o, "projects")["resources"].pop("requests"), "requests"),
        (lambda o: o.remove(dc.find(o, "PodDisruptionBudget", "credits-worker")), "PodDisruptionBudget"),
        (lambda o: o.remove(dc.find(o, "HorizontalPodAutoscaler", "usage")), "HorizontalPodAutoscaler"),
        (lambda o: o.remove(dc.find(o, "ScaledObject", "generation-worker")), "generation.jobs"),
        (lambda o: worker(o, "usage-worker")["spec"].update(replicas=1), "autoscaler owns them"),
        (lambda o: _pod(o, "generation-worker").update(terminationGracePeriodSeconds=30), "shutdown needs"),
        (lambda o: _container(o, "avatars-worker").update(command=["uvicorn"]), "lumiku_common.worker"),
        (lambda o: _container(o, "credits-worker")["ports"].pop(), "METRICS_PORT"),
        (lambda o: o.remove(dc.find(o, "Service", "usage-worker")), "no ServiceMonitor scrapes it"),
        (lambda o: o.remove(dc.find(o, "NetworkPolicy", "default-deny-ingress")), "default-deny"),
    ],
)
def test_the_rules_catch_what_they_are_for(objects: list[dc.Obj], change, expected: str) -> None:  # type: ignore[no-untyped-def]
    change(objects)
    assert expected in "\n".join(dc.policy_problems(objects))


def _pod(objects: list[dc.Obj], name: str) -> dc.Obj:
    pod: dc.Obj = dc.find(objects, "Deployment", name)["spec"]["template"]["spec"]
    return pod


def _container(objects: list[dc.Obj], name: str) -> dc.Obj:
    container: dc.Obj = _pod(objects, name)["containers"][0]
    return container


def test_the_image_serves_http_as_the_suite_does_locally() -> None:
    assert dc.image_problems() == []
    drifted = (dc.DEPLOY / "Dockerfile").read_text().replace("--timeout-keep-alive 75", "--timeout-keep-alive 5")
    assert dc.image_problems(drifted) == ["deploy/Dockerfile CMD lacks `--timeout-keep-alive 75`"]


def test_the_compose_file_passes_the_compose_schema() -> None:
    assert dc.compose_problems() == []


def test_the_compose_check_catches_a_bad_file() -> None:
    document = dc.compose()
    document["services"]["credits"]["depends_on"]["postgres"] = {"condition": "service_ready"}
    document["services"]["avatars"]["enviroment"] = {"SERVICE": "avatars"}
    del document["services"]["usage"]
    problems = "\n".join(dc.compose_problems(document))
    assert "services.credits.depends_on" in problems and "service_ready" in problems
    assert "enviroment" in problems and "service usage missing" in problems


def test_every_service_and_setting_is_in_compose_and_k8s(base: list[dc.Obj]) -> None:
    assert dc.drift_problems(base) == []


def test_drift_is_caught_both_ways(objects: list[dc.Obj], monkeypatch: pytest.MonkeyPatch) -> None:
    del dc.find(objects, "ConfigMap", "generation-config")["data"]["JOBS_PER_WORKER"]
    dc.find(objects, "ConfigMap", "usage-config")["data"]["USAGE_BATCH_SIZ"] = "200"
    document = dc.compose()
    del document["services"]["generation"]["environment"]["LEASE_SECONDS"]

    class Newer(GenerationSettings):
        generation_new_knob: int = 1  # a setting added in code but in neither deployment

    classes = {**dc.settings_classes(), "generation": Newer}
    monkeypatch.setattr(dc, "settings_classes", lambda: classes)
    problems = dc.drift_problems(objects, document)
    assert "k8s generation: setting JOBS_PER_WORKER not set" in problems
    assert "k8s generation-worker: setting JOBS_PER_WORKER not set" in problems
    assert "k8s usage: USAGE_BATCH_SIZ is no setting the code reads" in problems
    assert "compose generation: setting LEASE_SECONDS not set" in problems
    assert "compose generation: setting GENERATION_NEW_KNOB not set" in problems
    assert "k8s generation-worker: setting GENERATION_NEW_KNOB not set" in problems
