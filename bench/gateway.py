"""Gateway overhead: the same requests straight to the projects service and through the gateway.

Runs projects and the gateway as real uvicorn subprocesses on free ports, against a dedicated database
(`lumiku_projects_bench`, recreated each run) and event exchange (`lumiku.events.bench`), so it never
touches development data. Direct and gateway runs are interleaved (direct, gateway, direct, gateway) and
each side is summarised by the median of its two runs, which halves the effect of a noisy neighbour.

    uv run python -m bench.gateway [--requests 1000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

from bench.lib import Stats, measure, report
from lumiku_common.auth import mint_user_token
from lumiku_common.settings import ServiceSettings
from lumiku_devtools.suite import uvicorn_command

DATABASE = "lumiku_projects_bench"
EXCHANGE = "lumiku.events.bench"
PROJECTS_PATH = "/api/apps/avatar-creator/projects"
RATE_LIMIT_RULES = ("api", "create-project", "upload-avatar", "generate-avatar")
SEEDED_PROJECTS = 20
WARMUP = 20  # what the list benchmark pages through (one page of the default size)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Process:
    """One uvicorn subprocess; its output goes to a temporary file, printed if it fails to start."""

    def __init__(self, name: str, factory: str, port: int, env: dict[str, str]):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            uvicorn_command(factory, port, "--log-level", "warning"),
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready within {timeout}s:\n{self.output()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux /proc; NaN elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


async def recreate_database(postgres_url: str) -> None:
    """A fresh bench database each run keeps runs comparable (same table sizes) and dev data untouched."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"{postgres_url.rstrip('/')}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
    finally:
        await engine.dispose()


@contextmanager
def suite(base_env: dict[str, str]) -> Iterator[tuple[Process, Process]]:
    processes: list[Process] = []
    try:
        projects = Process("projects", "lumiku_projects.main:create_app", free_port(), base_env)
        processes.append(projects)
        projects.wait_ready()
        gateway_env = {**base_env, "SERVICE_URLS": json.dumps({"projects": projects.url})}
        gateway = Process("gateway", "lumiku_gateway.main:create_app", free_port(), gateway_env)
        processes.append(gateway)
        gateway.wait_ready()
        yield projects, gateway
    finally:
        for p in reversed(processes):
            p.stop()


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}: {exc.response.text[:200]}"
    return repr(exc)[:200]


def median_stats(name: str, runs: list[Stats]) -> Stats:
    """The median of each figure over the runs (of two runs, their mean)."""

    def med(attr: str) -> float:
        return round(statistics.median(getattr(s, attr) for s in runs), 2)

    return Stats(
        name=name,
        concurrency=runs[0].concurrency,
        requests=sum(s.requests for s in runs),
        errors=sum(s.errors for s in runs),
        seconds=round(sum(s.seconds for s in runs), 3),
        throughput=med("throughput"),
        p50_ms=med("p50_ms"),
        p95_ms=med("p95_ms"),
        p99_ms=med("p99_ms"),
        mean_ms=med("mean_ms"),
    )


async def run(requests: int, concurrency: int) -> Path:
    settings = ServiceSettings(environment="development")
    await recreate_database(settings.postgres_url)
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "LOG_LEVEL": "WARNING",
        "DATABASE_NAME": DATABASE,
        "EVENTS_EXCHANGE": EXCHANGE,
        "QUEUE_PREFIX": "bench.",
        "PYTHONUNBUFFERED": "1",
        # The gateway's per-user limits (100 requests/min, 10 projects/hour) would answer 429 within the first
        # second. They stay enabled, so the Redis counting is part of the measured overhead, but far out of reach.
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMITS": json.dumps({name: "100000000/60" for name in RATE_LIMIT_RULES}),
    }
    # The services' dev defaults; an outer JWT_SECRET in the environment is passed through to both.
    secret = env.get("JWT_SECRET", settings.jwt_secret)
    run_id = uuid.uuid4().hex[:8]

    def auth(user: str) -> dict[str, str]:
        token = mint_user_token(secret, f"bench-{user}-{run_id}", f"{user}@bench.example")
        return {"Authorization": f"Bearer {token}"}

    lister, creator = auth("lister"), auth("creator")
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    started = time.monotonic()
    with suite(env) as (projects, gateway):
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            for i in range(SEEDED_PROJECTS):
                seeded = await client.post(f"{projects.url}{PROJECTS_PATH}", json={"name": f"Seed {i}"}, headers=lister)
                seeded.raise_for_status()

            def list_op(base: str) -> Callable[[int], Awaitable[object]]:
                async def op(_: int) -> None:
                    response = await client.get(f"{base}{PROJECTS_PATH}", headers=lister)
                    response.raise_for_status()

                return op

            def create_op(base: str) -> Callable[[int], Awaitable[object]]:
                async def op(i: int) -> None:
                    body = {"name": f"Bench {i}", "description": "created by bench.gateway"}
                    response = await client.post(f"{base}{PROJECTS_PATH}", json=body, headers=creator)
                    response.raise_for_status()

                return op

            failures: Counter[str] = Counter()

            def counted(op: Callable[[int], Awaitable[object]]) -> Callable[[int], Awaitable[object]]:
                async def wrapped(i: int) -> object:
                    try:
                        return await op(i)
                    except Exception as exc:
                        failures[_describe(exc)] += 1
                        raise

                return wrapped

            raw: list[Stats] = []
            # CPU milliseconds each process spent per request: unlike latency, barely moved by a busy machine.
            sides = ("direct", "gateway")
            cpu: dict[str, dict[str, dict[str, list[float]]]] = {
                op: {side: {"projects": [], "gateway": []} for side in sides} for op in ("list", "create")
            }
            summary: dict[str, dict[str, Stats]] = {}
            for operation, make in (("list", list_op), ("create", create_op)):
                runs: dict[str, list[Stats]] = {"direct": [], "gateway": []}
                for round_ in (1, 2):
                    for side, base in (("direct", projects.url), ("gateway", gateway.url)):
                        cpu_before = {p.name: p.cpu_seconds() for p in (projects, gateway)}
                        stats = await measure(
                            f"{operation} {side} #{round_}",
                            counted(make(base)),
                            concurrency=concurrency,
                            requests=requests,
                            warmup=WARMUP,
                            progress=False,
                        )
                        print(stats.line(), file=sys.stderr, flush=True)
                        raw.append(stats)
                        served = requests + WARMUP
                        for p in (projects, gateway):
                            cpu[operation][side][p.name].append((p.cpu_seconds() - cpu_before[p.name]) * 1000 / served)
                        runs[side].append(stats)
                summary[operation] = {side: median_stats(f"{operation} {side} (median)", r) for side, r in runs.items()}

    ratios: dict[str, float] = {}
    for operation, by_side in summary.items():
        direct, via = by_side["direct"], by_side["gateway"]
        ratios[f"{operation}_p50_ratio"] = round(via.p50_ms / direct.p50_ms, 3)
        ratios[f"{operation}_p95_ratio"] = round(via.p95_ms / direct.p95_ms, 3)
        ratios[f"{operation}_throughput_ratio"] = round(via.throughput / direct.throughput, 3)
        ratios[f"{operation}_added_p50_ms"] = round(via.p50_ms - direct.p50_ms, 2)
        gateway_cpu = statistics.median(cpu[operation]["gateway"]["gateway"])
        projects_cpu = statistics.median(cpu[operation]["direct"]["projects"])
        ratios[f"{operation}_gateway_cpu_ms_per_request"] = round(gateway_cpu, 3)
        ratios[f"{operation}_projects_cpu_ms_per_request"] = round(projects_cpu, 3)
        ratios[f"{operation}_gateway_cpu_ratio"] = round(gateway_cpu / projects_cpu, 3)
    medians = [s for by_side in summary.values() for s in by_side.values()]
    return report(
        "gateway",
        medians + raw,
        ratios,
        notes={
            "what": "projects list (GET, 20 rows) and create (POST) straight to projects vs through the gateway",
            "method": "interleaved direct/gateway/direct/gateway; '(median)' rows are the median of the two runs",
            "ratios": "gateway / direct: p50 and p95 latency (>1 = slower), throughput (<1 = fewer requests/s)",
            "client": f"one httpx.AsyncClient, HTTP/1.1 keep-alive, pool {concurrency * 2}, same machine",
            "processes": "one uvicorn worker each for projects and gateway; client in a third process",
            "rate_limits": "gateway limiter on (Redis counters per request) with limits raised out of reach",
            "database": DATABASE,
            "exchange": EXCHANGE,
            "wall_seconds": round(time.monotonic() - started, 1),
            "errors": dict(failures),
            "cpu_ms_per_request": {
                op: {
                    side: {name: [round(v, 3) for v in values] for name, values in procs.items()}
                    for side, procs in by.items()
                }
                for op, by in cpu.items()
            },
            "cpu_ratio": "gateway CPU per proxied request / projects CPU per direct request (the gateway's cost)",
        },
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per run (4 runs per operation)")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    asyncio.run(run(args.requests, args.concurrency))


if __name__ == "__main__":
    main()
