"""Benchmark harness: run an async operation at a fixed concurrency, report latency percentiles and
throughput, and write JSON under bench/results/. Benchmarks compare against a baseline measured in the
same run (the machine is shared and noisy), so every report is a ratio as well as raw numbers."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

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
