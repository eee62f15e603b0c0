"""Offline checks of what CI cannot run here (`make validate-deploy`; the same checks are unit tests):

- deploy/k8s rendered like `kustomize build` (no kubectl here: `render` does the subset of kustomize the
  kustomizations use, and refuses any field it does not implement) and every object validated against the
  Kubernetes schemas (kubernetes-validate, strict); KEDA and Prometheus Operator objects against the small
  schemas in deploy/schemas of the fields we use;
- the rules the manifests must keep (`policy_problems`): hardened pods, sized resources, a PDB for every
  Deployment, autoscaling, workers, metrics ports, shutdown budgets within the grace period;
- docker-compose.yml against the Compose Specification's JSON schema (deploy/schemas/compose-spec.json);
- no drift (`drift_problems`): every service and worker, and every setting the code reads, is in both.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from lumiku_common.http_server import KEEP_ALIVE_SECONDS, PROTOCOL
from lumiku_common.settings import ServiceSettings
from lumiku_devtools.suite import GATEWAY, SERVICES

ROOT = Path(__file__).resolve().parents[4]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = DEPLOY / "schemas"
KUBERNETES_VERSION = "1.30.0"

Obj = dict[str, Any]
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
}
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "images", "patches"}
SERVICE_NAMES = tuple(s.name for s in SERVICES)  # every one has a database, so a -worker Deployment
ALL_SERVICES = (GATEWAY.name, *SERVICE_NAMES)
# Environment variables the deployments set that are not pydantic settings: read by the image's command,
# uvicorn, boto3 or the worker's metrics server.
NOT_SETTINGS = {"SERVICE", "PORT", "FORWARDED_ALLOW_IPS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "METRICS_PORT"}
# Settings no deployment sets, and why: the drift check accepts only these as absent.
UNSET_ON_PURPOSE = {
    "service_name": "fixed by each service's settings class",
    "version": "the code's version",
    "database_name": "each service's class names its database; POSTGRES_URL names the server",
    "queue_prefix": "test isolation only",
    "s3_create_bucket": "development and tests; deployments create the bucket (minio-init, infra Job)",
    "gateway_port": "`lumiku dev` only; the image listens on PORT",
}
GRACEFUL_HTTP_SECONDS = 20  # the image's and the worker's uvicorn --timeout-graceful-shutdown


# --- rendering ---------------------------------------------------------------------------------------------


def render(directory: Path = K8S) -> list[Obj]:
    """The objects `kustomize build directory` produces, for the fields our kustomizations use."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml: fields this renderer does not implement: {sorted(unknown)}")
    objects: list[Obj] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        objects += render(path) if path.is_dir() else load_documents(path)
    for patch in kustomization.get("patches", []):
        _apply_patch(objects, load_documents(directory / patch["path"])[0])
    for entry in kustomization.get("labels", []):
        _add_labels(objects, entry["pairs"], entry.get("includeTemplates", False), entry.get("includeSelectors", False))
    if namespace := kustomization.get("namespace"):
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    for image in kustomization.get("images", []):
        _set_image(objects, image)
    return objects


def load_documents(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _apply_patch(objects: list[Obj], patch: Obj) -> None:
    """A strategic-merge patch, for the maps our patches touch (lists would be replaced, so none is used)."""
    target = find(objects, patch["kind"], patch["metadata"]["name"])
    _merge(target, patch)


def _merge(into: Obj, patch: Obj) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _add_labels(objects: list[Obj], pairs: dict[str, str], templates: bool, selectors: bool) -> None:
    if selectors:
        raise ValueError("labels.includeSelectors: not implemented (selectors must stay as written)")
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(pairs)
        if templates and obj["kind"] in WORKLOADS:
            obj["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _set_image(objects: list[Obj], image: dict[str, str]) -> None:
    for container in (c for o in objects for c in containers(o)):
        name = container["image"].split(":")[0]
        if name == image["name"]:
            container["image"] = f"{image.get('newName', name)}:{image['newTag']}"


def containers(obj: Obj) -> Iterator[Obj]:
    if obj["kind"] in WORKLOADS:
        pod = obj["spec"]["template"]["spec"]
        yield from pod.get("initContainers", [])
        yield from pod["containers"]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"no {kind} {name}")


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


# --- schemas -----------------------------------------------------------------------------------------------


def schema_problems(objects: list[Obj]) -> list[str]:
    problems = []
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        custom = CUSTOM.get((obj["apiVersion"], obj["kind"]))
        try:
            if custom is not None:
                jsonschema.Draft202012Validator(_schema(custom)).validate(obj)
            else:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            problems.append(f"{where}: {'.'.join(map(str, exc.absolute_path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {obj['apiVersion']} {obj['kind']} (add one to deploy/schemas)")
    return problems


@cache
def _schema(name: str) -> Obj:
    loaded: Obj = json.loads((SCHEMAS / name).read_text())
    return loaded


def compose() -> Obj:
    loaded: Obj = yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # `<<` merge keys resolved
    return loaded


def compose_problems(document: Obj | None = None) -> list[str]:
    document = compose() if document is None else document
    validator = jsonschema.Draft201909Validator(_schema("compose-spec.json"))
    problems = [f"compose: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    services = document.get("services", {})
    for name in ALL_SERVICES:
        env = services.get(name, {}).get("environment", {})
        if env.get("SERVICE") != name:
            problems.append(f"compose: service {name} missing or its SERVICE is not {name!r}")
    return problems


# --- policy ------------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    obj: Obj

    @property
    def name(self) -> str:
        name: str = self.obj["metadata"]["name"]
        return name

    @property
    def pod(self) -> Obj:
        pod: Obj = self.obj["spec"]["template"]["spec"]
        return pod

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.obj["spec"]["template"]["metadata"]["labels"]
        return labels

    @property
    def is_worker(self) -> bool:
        return self.labels.get("app.kubernetes.io/component") == "worker"

    @property
    def container(self) -> Obj:
        container: Obj = self.pod["containers"][0]
        return container

    def env(self, objects: list[Obj]) -> dict[str, str]:
        """What the container's environment holds: envFrom ConfigMaps and the Secret's template, then env."""
        values: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            if "configMapRef" in source:
                values.update(find(objects, "ConfigMap", source["configMapRef"]["name"]).get("data") or {})
            else:
                values.update(secret_template(source["secretRef"]["name"])["stringData"])
        values.update({e["name"]: e.get("value", "") for e in self.container.get("env", [])})
        return values


def secret_template(name: str) -> Obj:
    for path in (K8S / "secret.template.yaml", K8S / "infra" / "infra-secret.template.yaml"):
        document = load_documents(path)[0]
        if document["metadata"]["name"] == name:
            return document
    raise KeyError(f"no template for Secret {name}")


def deployments(objects: list[Obj]) -> list[Deployment]:
    return [Deployment(o) for o in of_kind(objects, "Deployment")]


def policy_problems(objects: list[Obj]) -> list[str]:
    problems = []
    for deployment in deployments(objects):
        problems += [f"Deployment/{deployment.name}: {p}" for p in _deployment_problems(deployment, objects)]
    problems += _scaling_problems(objects)
    problems += _monitoring_problems(objects)
    if not any(p["spec"]["podSelector"] == {} for p in of_kind(objects, "NetworkPolicy")):
        problems.append("no default-deny NetworkPolicy (podSelector: {})")
    return problems


def _deployment_problems(d: Deployment, objects: list[Obj]) -> Iterator[str]:
    pod, container = d.pod, d.container
    if not (pod.get("securityContext", {}).get("runAsNonRoot") and _seccomp(pod)):
        yield "pod securityContext needs runAsNonRoot and seccompProfile RuntimeDefault"
    context = container.get("securityContext", {})
    if context.get("allowPrivilegeEscalation") is not False or context.get("readOnlyRootFilesystem") is not True:
        yield "container must set allowPrivilegeEscalation: false and readOnlyRootFilesystem: true"
    if context.get("capabilities", {}).get("drop") != ["ALL"]:
        yield "container must drop ALL capabilities"
    if "/tmp" not in {m["mountPath"] for m in container.get("volumeMounts", [])}:
        yield "read-only root filesystem without a writable /tmp"
    resources = container.get("resources", {})
    if {"cpu", "memory"} - set(resources.get("requests", {})) or "memory" not in resources.get("limits", {}):
        yield "needs cpu and memory requests and a memory limit"
    if not any(_selects(p["spec"]["selector"], d.labels) for p in of_kind(objects, "PodDisruptionBudget")):
        yield "no PodDisruptionBudget selects its pods"
    yield from _role_problems(d, objects)


def _role_problems(d: Deployment, objects: list[Obj]) -> Iterator[str]:
    env = d.env(objects)
    service = d.labels.get("app.kubernetes.io/name", "")
    if env.get("SERVICE") != service:
        yield f"SERVICE={env.get('SERVICE')!r}, labelled {service!r}"
    grace = d.pod.get("terminationGracePeriodSeconds", 30)
    drain = float(env.get("SHUTDOWN_DRAIN_SECONDS", 0))
    if d.is_worker:
        command = ["python", "-m", "lumiku_common.worker", service]
        if d.container.get("command") != command or env.get("RUN_WORKERS") != "true":
            yield "a worker runs `python -m lumiku_common.worker SERVICE` with RUN_WORKERS=true"
        ports = {p["name"]: p["containerPort"] for p in d.container.get("ports", [])}
        if ports.get("metrics") != 9100 or env.get("METRICS_PORT") != "9100":
            yield "a worker exposes METRICS_PORT=9100 as the container port `metrics`"
        budget = drain + float(env.get("CONSUMER_DRAIN_SECONDS", 10))
    else:
        if service != GATEWAY.name and env.get("RUN_WORKERS") != "false":
            yield "an API runs RUN_WORKERS=false (its -worker Deployment runs the workers)"
        budget = drain + GRACEFUL_HTTP_SECONDS
    if budget >= grace:
        yield f"shutdown needs {budget:g} s but terminationGracePeriodSeconds is {grace}"


def _scaling_problems(objects: list[Obj]) -> Iterator[str]:
    hpa_targets = [h["spec"]["scaleTargetRef"]["name"] for h in of_kind(objects, "HorizontalPodAutoscaler")]
    keda_targets = [s["spec"]["scaleTargetRef"]["name"] for s in of_kind(objects, "ScaledObject")]
    for d in deployments(objects):
        scaled = d.name in hpa_targets or d.name in keda_targets
        if not d.is_worker and d.name not in hpa_targets:
            yield f"Deployment/{d.name}: an API needs a CPU HorizontalPodAutoscaler"
        if d.name in hpa_targets and d.name in keda_targets:
            yield f"Deployment/{d.name}: both an HPA and a KEDA ScaledObject"
        if scaled and "replicas" in d.obj["spec"]:
            yield f"Deployment/{d.name}: sets replicas although an autoscaler owns them"
    queues = {s["spec"]["scaleTargetRef"]["name"]: _queues(s) for s in of_kind(objects, "ScaledObject")}
    for worker, queue in expected_scaled_queues().items():
        if queue not in queues.get(worker, set()):
            yield f"ScaledObject/{worker}: needs a rabbitmq trigger on queue {queue}"


def _queues(scaled: Obj) -> set[str]:
    return {t["metadata"]["queueName"] for t in scaled["spec"]["triggers"] if t["type"] == "rabbitmq"}


def expected_scaled_queues() -> dict[str, str]:
    """The queues whose depth scales workers, by the code's own names for them."""
    from lumiku_generation.handlers import JOBS_QUEUE
    from lumiku_usage.handlers import AVATAR_USED

    return {"generation-worker": JOBS_QUEUE, "usage-worker": AVATAR_USED}


def _monitoring_problems(objects: list[Obj]) -> Iterator[str]:
    monitors = of_kind(objects, "ServiceMonitor")
    for d in deployments(objects):
        services = [
            s for s in of_kind(objects, "Service") if _selects({"matchLabels": s["spec"]["selector"]}, d.labels)
        ]
        scraped = [
            port["name"]
            for m in monitors
            for s in services
            if _selects(m["spec"]["selector"], s["metadata"]["labels"])
            for port in s["spec"]["ports"]
            if port["name"] in {e["port"] for e in m["spec"]["endpoints"]}
        ]
        if not scraped:
            yield f"Deployment/{d.name}: no ServiceMonitor scrapes it"


def _seccomp(pod: Obj) -> bool:
    return bool(pod.get("securityContext", {}).get("seccompProfile", {}).get("type") == "RuntimeDefault")


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    match = selector.get("matchLabels", {})
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


# --- drift -------------------------------------------------------------------------------------------------


def settings_classes() -> dict[str, type[ServiceSettings]]:
    from lumiku_devtools.processes import SETTINGS
    from lumiku_gateway.settings import GatewaySettings

    return {GATEWAY.name: GatewaySettings, **SETTINGS}


def setting_names(cls: type[ServiceSettings]) -> set[str]:
    return {name.upper() for name in cls.model_fields if name not in UNSET_ON_PURPOSE}


def documented_unset(path: Path) -> set[str]:
    """Settings left unset on purpose, documented as a commented-out `# KEY: value` line."""
    return set(re.findall(r"^\s*#\s*([A-Z][A-Z0-9_]+):", path.read_text(), re.MULTILINE))


def drift_problems(objects: list[Obj], compose_document: Obj | None = None) -> list[str]:
    compose_document = compose() if compose_document is None else compose_document
    problems = []
    known = set().union(*(setting_names(c) for c in settings_classes().values())) | NOT_SETTINGS
    commented_k8s = set().union(*(documented_unset(p) for p in K8S.glob("*.yaml")))
    commented_compose = documented_unset(ROOT / "docker-compose.yml")
    names = {d.name: d for d in deployments(objects)}
    services = compose_document.get("services", {})
    for service, cls in settings_classes().items():
        wanted = setting_names(cls)
        runs = [service] + ([f"{service}-worker"] if service in SERVICE_NAMES else [])
        for name in runs:
            if name not in names:
                problems.append(f"k8s: no Deployment {name}")
                continue
            env = set(names[name].env(objects))
            problems += [f"k8s {name}: setting {key} not set" for key in sorted(wanted - env - commented_k8s)]
            problems += [f"k8s {name}: {key} is no setting the code reads" for key in sorted(env - known)]
        if service not in services:
            problems.append(f"compose: no service {service}")
            continue
        env = set(services[service].get("environment", {}))
        problems += [f"compose {service}: setting {key} not set" for key in sorted(wanted - env - commented_compose)]
        problems += [f"compose {service}: {key} is no setting the code reads" for key in sorted(env - known)]
    return problems


def image_problems(dockerfile: str | None = None) -> list[str]:
    """The image serves HTTP as `uvicorn_command` does locally: the bounded request heads, the keep-alive that
    outlasts every client's, the graceful shutdown the pods' budgets count on."""
    text = (DEPLOY / "Dockerfile").read_text() if dockerfile is None else dockerfile
    command = next((line for line in text.splitlines() if line.startswith("CMD ")), "")
    wanted = (
        f"--http {PROTOCOL}",
        f"--timeout-keep-alive {KEEP_ALIVE_SECONDS}",
        f"--timeout-graceful-shutdown {GRACEFUL_HTTP_SECONDS}",
        "--no-access-log",
    )
    return [f"deploy/Dockerfile CMD lacks `{option}`" for option in wanted if option not in command]


def all_problems() -> dict[str, list[str]]:
    base, infra = render(K8S), render(K8S / "infra")
    return {
        "k8s schemas (deploy/k8s)": schema_problems(base),
        "k8s schemas (deploy/k8s/infra)": schema_problems(infra),
        "k8s policy": policy_problems(base),
        "compose schema": compose_problems(),
        "drift (code settings vs compose and k8s)": drift_problems(base),
        "image command (deploy/Dockerfile)": image_problems(),
    }


def main() -> None:
    failed = False
    for check, problems in all_problems().items():
        print(f"{'FAIL' if problems else 'ok  '} {check}")
        for problem in problems:
            print(f"     - {problem}")
        failed = failed or bool(problems)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
