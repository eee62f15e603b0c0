"""Workers as real processes: one is SIGKILLed in the middle of a job; another finishes it, once, with one
charge per image and without asking the provider again for an image already kept or stored."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
from generation_support import APP, MODEL

from lumiku_common.ids import new_id
from lumiku_devtools.fake_hf import FakeHuggingFace, serving
from lumiku_devtools.processes import RealSuite, real_suite
from lumiku_devtools.testing import auth, eventually


@pytest.fixture(scope="module")
async def crash_suite() -> AsyncIterator[tuple[RealSuite, FakeHuggingFace]]:
    fake = FakeHuggingFace(delay=0.6)
    async with serving(fake) as url:
        generation = {
            "HUGGINGFACE_TOKEN": "hf_test_token",
            "HUGGINGFACE_INFERENCE_URL": url,
            "GENERATION_MODEL": MODEL,
            "GENERATION_FALLBACK_MODEL": "",
            "GENERATION_WIDTH": "256",
            "GENERATION_HEIGHT": "256",
            "IMAGES_IN_PARALLEL": "1",
            "LEASE_SECONDS": "2",
            "SWEEP_SECONDS": "0.5",
            "REDISPATCH_SECONDS": "2",
            "RUN_WORKERS": "false",  # the API alone: jobs run in the worker processes below
        }
        names = ("projects", "credits", "avatars", "generation")
        async with real_suite(names, "gencrash", service_env={"generation": generation}) as suite:
            yield suite, fake


async def test_a_worker_killed_mid_job_is_replaced_and_the_job_finishes_once(
    crash_suite: tuple[RealSuite, FakeHuggingFace],
) -> None:
    suite, fake = crash_suite
    first = suite.worker("generation")
    first.start()
    await first.wait_ready()
    headers = auth(suite.settings["gateway"], f"user-{new_id()}")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{suite.gateway.port}", headers=headers, timeout=30) as api:
        project_id = (await api.post(f"{APP}/projects", json={"name": "Crash"})).json()["project"]["id"]
        body = {"prompt": "A portrait of a smiling woman", "name": "Crash test", "count": 4}
        response = await api.post(
            f"{APP}/projects/{project_id}/avatars/generate", json=body, headers={"Prefer": "respond-async"}
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["generation"]["id"]

        async def produced(n: int) -> dict | None:  # type: ignore[type-arg]
            job = (await api.get(f"{APP}/generations/{job_id}")).json()["generation"]
            return job if job["produced"] >= n else None

        await eventually(lambda: produced(2), timeout=30)
        await asyncio.sleep(0.3)  # the third image is with the provider now
        first.stop()  # SIGKILL
        stored_before = {c.body["parameters"]["seed"] for c in fake.calls[:2]}

        second = suite.worker("generation")
        second.start()
        await second.wait_ready()

        async def finished() -> dict | None:  # type: ignore[type-arg]
            job = (await api.get(f"{APP}/generations/{job_id}")).json()["generation"]
            return job if job["status"] not in ("queued", "running") else None

        job = await eventually(finished, timeout=60)
        assert (job["status"], job["produced"], job["charged"], job["refunded"]) == ("succeeded", 4, 45, 0)
        avatars = (await api.get(f"{APP}/avatars", params={"projectId": project_id})).json()["avatars"]
        assert sorted(a["id"] for a in avatars) == sorted(job["avatarIds"])
        seeds = [c.body["parameters"]["seed"] for c in fake.calls]
        assert all(seeds.count(seed) == 1 for seed in stored_before)  # never asked again
        assert sorted({a["seedUsed"] for a in avatars}) == sorted(set(seeds))

        async def settled() -> dict | None:  # type: ignore[type-arg]
            balance = (await api.get("/api/credits/balance")).json()
            return balance if balance["held"] == 0 else None

        balance = await eventually(settled, timeout=30)
        assert balance["balance"] == 100 - 45
        entries = (await api.get("/api/credits/transactions")).json()["transactions"]
        usage = [e for e in entries if e["type"] == "usage"]
        assert sorted(-e["amount"] for e in usage) == [10, 10, 10, 15]
        assert {e["referenceId"] for e in usage} == {job_id}


async def _start_job(api: httpx.AsyncClient) -> tuple[str, str]:
    project_id = (await api.post(f"{APP}/projects", json={"name": "Shutdown"})).json()["project"]["id"]
    body = {"prompt": "A portrait of a smiling woman", "name": "Shutdown test", "count": 4}
    response = await api.post(
        f"{APP}/projects/{project_id}/avatars/generate", json=body, headers={"Prefer": "respond-async"}
    )
    assert response.status_code == 202, response.text
    return project_id, response.json()["generation"]["id"]


async def _job(api: httpx.AsyncClient, job_id: str) -> dict:  # type: ignore[type-arg]
    job: dict = (await api.get(f"{APP}/generations/{job_id}")).json()["generation"]  # type: ignore[type-arg]
    return job


async def _assert_done_once(api: httpx.AsyncClient, project_id: str, job_id: str, fake: FakeHuggingFace) -> None:
    """Four images, each asked of the provider once, stored once and charged once."""
    job = await _job(api, job_id)
    assert (job["status"], job["produced"], job["charged"], job["refunded"]) == ("succeeded", 4, 45, 0)
    avatars = (await api.get(f"{APP}/avatars", params={"projectId": project_id})).json()["avatars"]
    assert sorted(a["id"] for a in avatars) == sorted(job["avatarIds"])
    balance = await eventually(lambda: _settled(api), timeout=30)
    assert balance["balance"] == 100 - 45
    seeds = [c.body["parameters"]["seed"] for c in fake.calls if c.answered is not None]
    assert sorted({a["seedUsed"] for a in avatars}) == sorted(set(seeds))


async def _settled(api: httpx.AsyncClient) -> dict | None:  # type: ignore[type-arg]
    balance: dict = (await api.get("/api/credits/balance")).json()  # type: ignore[type-arg]
    return balance if balance["held"] == 0 else None


@contextlib.asynccontextmanager
async def _sigterm_mid_job(suite: RealSuite, drain_seconds: str) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    """A generation worker (CONSUMER_DRAIN_SECONDS=drain_seconds) gets SIGTERM once its job has produced an
    image; yields (api, project id, job id) after the worker exited on its own. It is the only worker."""
    for leftover in suite.workers:  # earlier tests' workers, their jobs done
        leftover.stop()
    worker = suite.worker("generation")
    worker.start(CONSUMER_DRAIN_SECONDS=drain_seconds)
    await worker.wait_ready()
    assert worker.proc is not None
    headers = auth(suite.settings["gateway"], f"user-{new_id()}")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{suite.gateway.port}", headers=headers, timeout=30) as api:
        project_id, job_id = await _start_job(api)
        await eventually(lambda: _produced(api, job_id, 1), timeout=30)
        worker.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.proc.wait, 40) == -signal.SIGTERM  # exited, not killed
        yield api, project_id, job_id


async def test_a_worker_told_to_stop_mid_job_finishes_it_before_exiting(
    crash_suite: tuple[RealSuite, FakeHuggingFace],
) -> None:
    suite, fake = crash_suite
    fake.calls.clear()
    async with _sigterm_mid_job(suite, drain_seconds="30") as (api, project_id, job_id):
        # It took no new work but finished this job before exiting; no other worker ran.
        assert (await _job(api, job_id))["status"] == "succeeded"
        await _assert_done_once(api, project_id, job_id, fake)
        assert len(fake.calls) == 4


async def test_a_worker_whose_drain_runs_out_returns_the_job_and_another_finishes_it_once(
    crash_suite: tuple[RealSuite, FakeHuggingFace],
) -> None:
    suite, fake = crash_suite
    fake.calls.clear()
    async with _sigterm_mid_job(suite, drain_seconds="0.2") as (api, project_id, job_id):
        assert (await _job(api, job_id))["status"] in ("queued", "running")  # returned unfinished
        second = suite.worker("generation")
        second.start()
        await second.wait_ready()
        await eventually(lambda: _finished(api, job_id), timeout=60)
        await _assert_done_once(api, project_id, job_id, fake)


async def _produced(api: httpx.AsyncClient, job_id: str, n: int) -> dict | None:  # type: ignore[type-arg]
    job = await _job(api, job_id)
    return job if job["produced"] >= n else None


async def _finished(api: httpx.AsyncClient, job_id: str) -> dict | None:  # type: ignore[type-arg]
    job = await _job(api, job_id)
    return job if job["status"] not in ("queued", "running") else None
