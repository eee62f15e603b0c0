"""Benchmark harness: run an async operation at a fixed concurrency, report latency percentiles and
throughput, and write JSON under bench/results/. Benchmarks compare against a baseline measured in the
same run (the machine is shared and noisy), so every report is a ratio as well as raw numbers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import httpx

from lumiku_devtools.suite import uvicorn_command

RESULTS = Path(__file__).parent / "results"


@dataclass
class Stats:
    name: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float  # successful operations per second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float

    def line(self) -> str:
        return (
            f"{self.name:<40} c={self.concurrency:<3} n={self.requests:<6} err={self.errors:<4} "
            f"{self.throughput:9.1f}/s  p50 {self.p50_ms:7.2f}  p95 {self.p95_ms:7.2f}  p99 {self.p99_ms:7.2f} ms"
        )


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    index = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[index]


async def measure(
    name: str,
    operation: Callable[[int], Awaitable[object]],
    *,
    concurrency: int,
    requests: int,
    warmup: int = 20,
    progress: bool = True,
) -> Stats:
    """Calls `operation(i)` `requests` times with `concurrency` in flight. An exception counts as an error."""
    for i in range(min(warmup, requests)):
        await operation(-1 - i)
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            started = time.perf_counter()
            try:
                await operation(i)
            except Exception:
                errors += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            if progress and len(latencies) % max(1, requests // 10) == 0:
                print(f"  {name}: {len(latencies)}/{requests}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    latencies.sort()
    return Stats(
        name=name,
        concurrency=concurrency,
        requests=requests,
        errors=errors,
        seconds=round(seconds, 3),
        throughput=round(len(latencies) / seconds, 1) if seconds else 0.0,
        p50_ms=round(_percentile(latencies, 0.50), 2),
        p95_ms=round(_percentile(latencies, 0.95), 2),
        p99_ms=round(_percentile(latencies, 0.99), 2),
        mean_ms=round(statistics.fmean(latencies), 2) if latencies else float("nan"),
    )


def report(
    benchmark: str, stats: list[Stats], ratios: dict[str, float], notes: dict[str, object] | None = None
) -> Path:
    """Prints a table and writes bench/results/<benchmark>.json."""
    for s in stats:
        print(s.line())
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{benchmark}.json"
    payload = {
        "benchmark": benchmark,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "stats": [asdict(s) for s in stats],
        "ratios": ratios,
        "notes": notes or {},
    }
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def machine_seconds() -> tuple[float, float]:
    """CPU seconds all cores have spent busy, and stolen by the hypervisor, since boot (Linux /proc/stat; NaN
    elsewhere). What a run's processes do not account for of the busy time is the database's, the broker's,
    the cache's and the kernel's share; stolen time is the host's other guests running on our cores."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return float("nan"), float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


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
