"""Measures what deploy/k8s's resource requests and limits are sized from: every service's API and worker as
real processes (lumiku_devtools.processes, started as `make dev` starts them, APIs with RUN_WORKERS=false
beside `python -m lumiku_common.worker SERVICE`), idle, then under a mix of requests through the gateway.

    uv run python deploy/measure_resources.py [--seconds 30] [--concurrency 8]

Reports per process: resident memory idle and at its peak, and CPU milliseconds per gateway request (CPU
time, not wall time, so a busy machine skews it less than latency). Needs the local servers (`make infra`).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image

from lumiku_common.ids import new_id
from lumiku_devtools.processes import Process, RealSuite, real_suite
from lumiku_devtools.testing import auth

APP = "/api/apps/avatar-creator"
NAMES = ("projects", "avatars", "generation", "credits", "usage")
TICKS = os.sysconf("SC_CLK_TCK")
FAILED: Counter[int] = Counter()


def cpu_seconds(process: Process) -> float:
    assert process.proc is not None
    fields = Path(f"/proc/{process.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def photo() -> bytes:
    image = Image.new("RGB", (1280, 960), (random.randrange(256), 120, 80))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


async def user_session(api: httpx.AsyncClient, headers: dict[str, str], image: bytes, until: float) -> int:
    """One user's realistic loop; returns the requests it made (non-2xx answers are counted in FAILED)."""
    project = (await api.post(f"{APP}/projects", json={"name": "Load"}, headers=headers)).json()["project"]["id"]
    files = {"image": ("photo.jpg", image, "image/jpeg")}
    avatar = await api.post(f"{APP}/projects/{project}/avatars", data={"name": "A"}, files=files, headers=headers)
    avatar.raise_for_status()
    avatar_id = avatar.json()["avatar"]["id"]
    made = 2
    while time.monotonic() < until:
        track = {"avatarId": avatar_id, "appId": "load", "appName": "Load", "action": "use"}
        for request in (
            api.get(f"{APP}/projects", headers=headers),
            api.get(f"{APP}/projects/{project}", headers=headers),
            api.get("/api/credits/balance", headers=headers),
            api.post(f"{APP}/track-usage", json=track, headers=headers),
            api.get(f"{APP}/avatars/{avatar_id}/usage-history", headers=headers),
            api.get(f"{APP}/generations", headers=headers),
        ):
            response = await request
            if response.status_code >= 400:
                FAILED[response.status_code] += 1
            made += 1
    return made


async def measure(seconds: float, concurrency: int) -> None:
    # A small pool: the shared development PostgreSQL must serve other people's tests meanwhile.
    env = {name: {"RUN_WORKERS": "false", "LOG_LEVEL": "WARNING", "DB_POOL_SIZE": "3"} for name in NAMES}
    async with real_suite(NAMES, "measure", service_env=env) as suite:
        for name in NAMES:
            suite.worker(name).start()
        await asyncio.gather(*(w.wait_ready() for w in suite.workers))
        await asyncio.sleep(3)
        processes = labelled(suite)
        idle = {label: p.rss_mib() for label, p in processes.items()}
        cpu_before = {label: cpu_seconds(p) for label, p in processes.items()}
        peak = dict(idle)
        image = photo()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{suite.gateway.port}", timeout=60) as api:
            until = time.monotonic() + seconds
            tokens = [auth(suite.settings["gateway"], f"load-{new_id()}") for _ in range(concurrency)]
            load = asyncio.gather(*(user_session(api, headers, image, until) for headers in tokens))
            while not load.done():
                for label, p in processes.items():
                    peak[label] = max(peak[label], p.rss_mib())
                await asyncio.sleep(0.5)
            requests = sum(await load)
        cpu = {label: cpu_seconds(p) - cpu_before[label] for label, p in processes.items()}
    print(f"{requests} gateway requests in {seconds:g} s ({requests / seconds:.0f}/s), {concurrency} users")
    print(f"non-2xx answers: {dict(FAILED) or 'none'}")
    print(f"{'process':<20}{'idle RSS MiB':>14}{'peak RSS MiB':>14}{'CPU s':>8}{'CPU ms/req':>12}")
    for label in processes:
        per_request = cpu[label] / requests * 1000
        print(f"{label:<20}{idle[label]:>14.0f}{peak[label]:>14.0f}{cpu[label]:>8.1f}{per_request:>12.2f}")


def labelled(suite: RealSuite) -> dict[str, Process]:
    processes = {"gateway": suite.gateway, **suite.services}
    processes.update({f"{name}-worker": w for name, w in zip(NAMES, suite.workers, strict=True)})
    return processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(measure(args.seconds, args.concurrency))


if __name__ == "__main__":
    main()
