"""Schema fuzzing (issue 8): schemathesis' CLI against the gateway's merged OpenAPI, served over real TCP by
the gateway in front of in-process projects, credits, avatars, usage and generation (real PostgreSQL,
RabbitMQ), with a valid user token. Negative and positive data, the schema's examples, its coverage cases
and stateful sequences along its links. The gate: no response >= 500, and every response declared (status
code, content type, headers, body schema).

`make test` runs a small, seeded sample (FUZZ_EXAMPLES per operation, ~20 s); `make fuzz` raises it. Nothing
is excepted from the gate. A failure prints schemathesis' report: each failing request as curl, and the seed
that reproduces the run."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

import lumiku_avatars
import lumiku_credits
import lumiku_generation
import lumiku_projects
import lumiku_usage
from lumiku_avatars.main import create_app as create_avatars
from lumiku_avatars.settings import AvatarsSettings
from lumiku_common.ids import new_id
from lumiku_credits.main import create_app as create_credits
from lumiku_credits.settings import CreditsSettings
from lumiku_devtools.gateway import gateway_app_for
from lumiku_devtools.testing import auth, delete_queues, prepare_database, served, settings_for_tests
from lumiku_generation.handlers import JOBS_QUEUE, PROJECTS_QUEUE
from lumiku_generation.main import create_app as create_generation
from lumiku_generation.settings import GenerationSettings
from lumiku_projects.main import create_app as create_projects
from lumiku_projects.settings import ProjectsSettings
from lumiku_usage.handlers import AVATAR_EVENTS, AVATAR_USED
from lumiku_usage.main import create_app as create_usage
from lumiku_usage.settings import UsageSettings

APP = "/api/apps/avatar-creator"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
SEED = int(os.environ.get("FUZZ_SEED", "8"))
# The gate. Also worth a look now and then (FUZZ_CHECKS=all): negative_data_rejection and
# positive_data_acceptance (where the schema and the validation disagree), allow_header_conformance.
CHECKS = os.environ.get("FUZZ_CHECKS") or ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
)


@pytest.fixture(scope="module")
async def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, AvatarsSettings]]:
    storage = {"storage_backend": "filesystem", "storage_path": str(tmp_path_factory.mktemp("fuzz") / "objects")}
    # One request at a time (schemathesis --workers 1): small pools leave PostgreSQL's connections to the others.
    small = {"db_pool_size": 2}
    projects = settings_for_tests(ProjectsSettings, "fuzz", **small)
    credits = settings_for_tests(CreditsSettings, "fuzz", credits_sweep_seconds=3600, **small)
    avatars = settings_for_tests(AvatarsSettings, "fuzz", **storage, **small)
    usage = settings_for_tests(UsageSettings, "fuzz", **small)
    # The placeholder provider answers at once with a small image: the synchronous generate stays fast.
    generation = settings_for_tests(
        GenerationSettings,
        "fuzz",
        generation_provider="placeholder",
        generation_width=64,
        generation_height=64,
        generation_sync_wait_s=10,
        **small,
    )
    prepared = ((projects, lumiku_projects), (credits, lumiku_credits), (avatars, lumiku_avatars))
    for settings, package in (*prepared, (usage, lumiku_usage), (generation, lumiku_generation)):
        await prepare_database(settings, Path(package.__file__).parent / "migrations")

    def avatars_app(transports: dict[str, httpx.AsyncBaseTransport]) -> object:
        return create_avatars(avatars, transports)

    def usage_app(transports: dict[str, httpx.AsyncBaseTransport]) -> object:
        return create_usage(usage, transports)

    def generation_app(transports: dict[str, httpx.AsyncBaseTransport]) -> object:
        return create_generation(generation, transports)

    services = {
        "projects": create_projects(projects),
        "credits": create_credits(credits),
        "avatars": avatars_app,
        "usage": usage_app,
        "generation": generation_app,
    }
    async with gateway_app_for(services, **storage) as app, served(app) as url:  # type: ignore[arg-type]
        yield url, avatars
    await delete_queues(avatars, "avatars.project-events", "avatars.usage-events")
    await delete_queues(usage, AVATAR_EVENTS, AVATAR_USED)
    await delete_queues(generation, JOBS_QUEUE, PROJECTS_QUEUE)


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(out, "JPEG")
    return out.getvalue()


async def _seed(url: str, headers: dict[str, str]) -> None:
    """A project with an avatar, so operations on existing resources (found through the list endpoints' links
    and the stateful phase) see real ids, not only 404s."""
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        created = await client.post(f"{APP}/projects", json={"name": "Fuzz seed"})
        assert created.status_code == 201, created.text
        project_id = created.json()["project"]["id"]
        files = {"image": ("seed.jpg", _jpeg(), "image/jpeg")}
        uploaded = await client.post(f"{APP}/projects/{project_id}/avatars", data={"name": "Seed"}, files=files)
        assert uploaded.status_code == 201, uploaded.text
        use = {"avatarId": uploaded.json()["avatar"]["id"], "appId": "pose-generator", "appName": "Pose Generator"}
        tracked = await client.post(f"{APP}/track-usage", json={**use, "action": "generate_pose"})
        assert tracked.status_code == 201, tracked.text


async def test_schema_fuzzing(gateway_url: tuple[str, AvatarsSettings], tmp_path: Path) -> None:
    url, settings = gateway_url
    headers = auth(settings, f"fuzz-{new_id()}", role="admin")  # admin: grants are fuzzed too, not only 403
    await _seed(url, headers)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization:{headers['Authorization']}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--mode",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
        "--suppress-health-check",
        "all",
        "--generation-database",
        "none",  # the same cases every run
    ]
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )  # cwd: schemathesis keeps a cache in ./.schemathesis
    output, _ = await process.communicate()
    report = output.decode(errors="replace")
    report += f"\nschemathesis: {EXAMPLES} examples per operation, seed {SEED}, {time.monotonic() - started:.1f} s"
    print(report)
    assert process.returncode == 0, f"schema fuzzing failed (reproduce with FUZZ_SEED={SEED}):\n{report}"
