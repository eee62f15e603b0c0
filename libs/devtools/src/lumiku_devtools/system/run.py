"""One system test run: fresh databases, the suite as real processes behind TCP proxies (APIs with
RUN_WORKERS=false and one `python -m lumiku_common.worker` per service), the provider stand-in, then load and
chaos together, a bounded drain, the checks and the report."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lumiku_common.errors import is_unavailable
from lumiku_devtools.fake_hf import FakeHuggingFace, serving
from lumiku_devtools.processes import SETTINGS, Process, RealSuite, real_suite
from lumiku_devtools.system import snapshot
from lumiku_devtools.system.chaos import RESTART_TIMEOUT, Chaos, watch_database_room
from lumiku_devtools.system.invariants import Check, Snapshot, Work, check_all, check_work
from lumiku_devtools.system.load import Load
from lumiku_devtools.system.timeline import Exchange, Verdict, classify
from lumiku_devtools.testing import EventSpy, TcpProxy, eventually, prepare_database, settings_for_tests
from lumiku_generation.drawing import draw_png

NAMESPACE = "system"
SERVICES = ("projects", "avatars", "credits", "usage", "generation")
MODEL = "stand-in/portrait"
IMAGE_SIDE = 256


@dataclass
class Config:
    load_seconds: float = 75.0  # at least; the load goes on until the chaos schedule is over, plus the tail
    tail_seconds: float = 10.0
    users: int = 8
    seed: int = 12
    drain_seconds: float = 120.0
    # After a fault ends, 5xx are still its doing for this long (pools reconnect, the gateway's next try).
    grace_seconds: float = 5.0
    cut_seconds: float = 5.0
    chaos: bool = True
    db_pool_size: int = 1
    report_dir: Path = Path(".data/system-test")


@dataclass
class Report:
    config: dict[str, Any]
    load: dict[str, Any] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    invariants: list[dict[str, Any]] = field(default_factory=list)
    drain: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(not i["failures"] for i in self.invariants) and not self.drain.get("still busy")


def _env(proxies: dict[str, TcpProxy], provider_url: str, db_pool_size: int) -> dict[str, dict[str, str]]:
    base = settings_for_tests(SETTINGS["projects"], NAMESPACE)
    links = {
        "POSTGRES_URL": proxies["postgres"].url_for(base.postgres_url),
        "AMQP_URL": proxies["rabbitmq"].url_for(base.amqp_url),
        "RUN_WORKERS": "false",  # the APIs alone; each service's workers are separate processes
        # Ten processes share one PostgreSQL (max_connections 100 here, with other test runs on it): a pool of
        # one (plus one overflow) each keeps the run's share near 30 connections.
        "DB_POOL_SIZE": str(db_pool_size),
    }
    quick = {
        "avatars": {
            "OBJECT_PURGE_INTERVAL_SECONDS": "2",
            "ORPHAN_SWEEP_INTERVAL_SECONDS": "5",
            "ORPHAN_GRACE_SECONDS": "20",
        },
        "credits": {"CREDITS_SWEEP_SECONDS": "1"},
        "generation": {
            "HUGGINGFACE_TOKEN": "hf_system_test",
            "HUGGINGFACE_INFERENCE_URL": provider_url,
            "GENERATION_MODEL": MODEL,
            "GENERATION_FALLBACK_MODEL": "",
            "GENERATION_WIDTH": str(IMAGE_SIDE),
            "GENERATION_HEIGHT": str(IMAGE_SIDE),
            "PROVIDER_TIMEOUT_SECONDS": "3",
            "PROVIDER_BACKOFF_SECONDS": "0.2",
            "PROVIDER_MAX_BACKOFF_SECONDS": "1",
            "PROVIDER_MAX_WAIT_SECONDS": "2",
            "LEASE_SECONDS": "5",
            "SWEEP_SECONDS": "1",
            "REDISPATCH_SECONDS": "5",
            "GENERATION_SYNC_WAIT_S": "20",
        },
    }
    return {name: {**links, **quick.get(name, {})} for name in SERVICES}


def _log_dir(config: Config) -> Path:
    directory = config.report_dir / "logs"
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.log"):
        old.unlink()
    return directory


async def _fresh_databases() -> None:
    for name in SERVICES:
        migrations = Path(str(importlib.import_module(f"lumiku_{name}").__file__)).parent / "migrations"
        for attempt in range(60):  # the shared server may be full of other test runs' connections for a while
            try:
                await prepare_database(settings_for_tests(SETTINGS[name], NAMESPACE), migrations)
                break
            except Exception as exc:  # raw from asyncpg, or wrapped by SQLAlchemy
                if attempt == 59 or not is_unavailable(exc):
                    raise
                await asyncio.sleep(2)


async def run(config: Config) -> Report:
    report = Report({k: str(v) for k, v in asdict(config).items()})
    await _fresh_databases()
    proxies = {
        "postgres": await TcpProxy("127.0.0.1", 5432).start(),
        "rabbitmq": await TcpProxy("127.0.0.1", 5672).start(),
    }
    fake = FakeHuggingFace(images={(IMAGE_SIDE, IMAGE_SIDE): draw_png("stand-in", 1, IMAGE_SIDE, IMAGE_SIDE)})
    try:
        async with (
            serving(fake) as provider_url,
            real_suite(
                SERVICES,
                NAMESPACE,
                _env(proxies, provider_url, config.db_pool_size),
                log_dir=_log_dir(config),
                ready_timeout=240,
                respawn=True,
            ) as suite,
        ):
            await _run_suite(suite, config, proxies, fake, report)
    finally:
        for proxy in proxies.values():
            await proxy.stop()
    return report


async def _run_suite(
    suite: RealSuite, config: Config, proxies: dict[str, TcpProxy], fake: FakeHuggingFace, report: Report
) -> None:
    workers = {f"{name}-worker": suite.worker(name) for name in SERVICES}
    for worker in workers.values():
        worker.start()
    await asyncio.gather(*(w.wait_ready(240) for w in workers.values()))
    processes: dict[str, Process] = {f"{n}-api": p for n, p in suite.services.items()} | workers
    processes["gateway"] = suite.gateway
    gateway_settings = suite.settings["gateway"]
    amqp_url, exchange = gateway_settings.amqp_url, gateway_settings.events_exchange
    async with (
        EventSpy(amqp_url, exchange, "avatar.created") as created,
        EventSpy(amqp_url, exchange, "avatar.deleted") as deleted,
        EventSpy(amqp_url, exchange, "generation.finished") as finished,
        snapshot.engines(suite.settings) as engines,
        Load(f"http://127.0.0.1:{suite.gateway.port}", gateway_settings, config.users, config.seed) as load,
    ):
        chaos = Chaos(processes, proxies, fake, config.seed, config.cut_seconds)
        await load.start()
        began, stop = time.monotonic(), asyncio.Event()

        async def schedule() -> None:
            faults = chaos.run(config.load_seconds) if config.chaos else asyncio.sleep(0)
            await asyncio.gather(asyncio.sleep(config.load_seconds), faults)
            await asyncio.sleep(config.tail_seconds)  # load with every process back: recovering is part of it
            stop.set()

        await asyncio.gather(load.run(stop), schedule(), watch_database_room(engines["credits"], chaos.windows, stop))
        elapsed = time.monotonic() - began
        sources = snapshot.Sources(
            suite.settings, suite.envs["avatars"]["STORAGE_PATH"], load.record, created, deleted, finished, engines
        )
        report.drain = await _drain(sources, config.drain_seconds)
        state = await snapshot.take(sources)
        checks = [*check_all(state), check_work(_work(load, state, config.users))]
    verdict = classify(load.record.exchanges, chaos.windows, config.grace_seconds)
    _fill(report, load, chaos, elapsed, checks, verdict, fake)


def _work(load: Load, state: Snapshot, users: int) -> Work:
    exchanges = load.record.exchanges
    return Work(
        requests=len(exchanges),
        answered_2xx=sum(1 for e in exchanges if e.status is not None and 200 <= e.status < 300),
        users=users,
        avatars_created=len(state.announced),
        avatars_generated=sum(1 for a in state.announced if a in state.generated_by),
        uses_accepted=sum(len(v) for v in load.record.accepted_uses.values()),
        wallets=len(state.wallets),
    )


async def _drain(sources: snapshot.Sources, seconds: float) -> dict[str, Any]:
    """Waits (bounded) until nothing moves twice in a row, a second apart."""
    began = time.monotonic()
    quiet = 0
    busy: list[str] = []

    async def calm() -> bool:
        nonlocal quiet, busy
        try:
            busy = await snapshot.settled(sources)
        except Exception as exc:  # the shared servers refusing us for a moment is not the system's fault
            busy = [f"not readable: {exc!r:.200}"]
        quiet = 0 if busy else quiet + 1
        return quiet >= 2

    try:
        await eventually(calm, seconds, 1.0, "the system settled")
    except AssertionError:
        return {"seconds": round(time.monotonic() - began, 1), "still busy": busy}
    return {"seconds": round(time.monotonic() - began, 1)}


def _fill(
    report: Report,
    load: Load,
    chaos: Chaos,
    elapsed: float,
    checks: list[Check],
    verdict: Verdict,
    fake: FakeHuggingFace,
) -> None:
    exchanges = load.record.exchanges
    statuses: dict[str, int] = {}
    for e in exchanges:
        statuses[str(e.status or "no answer")] = statuses.get(str(e.status or "no answer"), 0) + 1
    report.load = {
        "seconds": round(elapsed, 1),
        "requests": len(exchanges),
        "requests_per_second": round(len(exchanges) / elapsed, 1),
        "events_published": load.record.events_confirmed + len(load.record.injected),
        "events_per_second": round((load.record.events_confirmed + len(load.record.injected)) / elapsed, 1),
        "statuses": dict(sorted(statuses.items())),
        "by_route": _by_route(exchanges),
        "actions": dict(load.record.actions),
        "provider_calls": len(fake.calls),
        "server_errors": verdict.server_errors,
        "server_errors_during_faults": verdict.explained,
    }
    report.faults = [
        {
            "kind": w.kind,
            "target": w.target,
            "seconds": round(w.end - w.start, 1),
            "starts": chaos.restarts.get(w.target),
        }
        for w in sorted(chaos.windows, key=lambda w: w.start)
        if w.kind != "environment"
    ]
    full = [w for w in chaos.windows if w.kind == "environment"]
    if full:  # not injected: the shared server had no connection left (other runs on it)
        seconds = round(sum(w.end - w.start for w in full), 1)
        report.faults.append({"kind": "environment", "target": "postgres-full", "count": len(full), "seconds": seconds})
    report.faults += [
        {"kind": "event", "target": kind, "count": n} for kind, n in _count(load.record.injected.values()).items()
    ]
    back = Check("every killed process came back", checked=len(chaos.restarts))
    back.failures = [f"{name} not ready {RESTART_TIMEOUT:g} s after its restart" for name in chaos.unrecovered]
    checks.append(back)
    five_xx = Check("5xx only during faults, only 502/503/504", checked=verdict.server_errors)
    five_xx.failures = [
        f"{e.method} {e.route} -> {e.status or e.error} at +{e.started - exchanges[0].started:.1f}s"
        for e in verdict.unexplained
    ]
    report.invariants = [
        {"name": c.name, "checked": c.checked, "failures": c.failures[:20], "failed": len(c.failures), **c.notes}
        for c in [*checks, five_xx]
    ]


def _by_route(exchanges: list[Exchange]) -> dict[str, dict[str, int]]:
    routes: dict[str, dict[str, int]] = {}
    for e in exchanges:
        counts = routes.setdefault(e.route, {})
        counts[str(e.status or "no answer")] = counts.get(str(e.status or "no answer"), 0) + 1
    return dict(sorted(routes.items()))


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def write(report: Report, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"report-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(asdict(report), indent=2, default=str))
    return path


def render(report: Report) -> str:
    load = report.load
    lines = [
        f"load: {load['seconds']} s, {load['requests']} requests ({load['requests_per_second']}/s), "
        f"{load['events_published']} events ({load['events_per_second']}/s), {load['provider_calls']} provider calls",
        f"statuses: {load['statuses']}",
        f"drain: {report.drain}",
        "faults:",
        *(f"  {f}" for f in report.faults),
        "invariants:",
    ]
    for inv in report.invariants:
        notes = {k: v for k, v in inv.items() if k not in ("name", "checked", "failures", "failed")}
        mark = "ok  " if not inv["failed"] else "FAIL"
        lines.append(f"  {mark} {inv['name']}: checked {inv['checked']}, failures {inv['failed']} {notes or ''}")
        lines += [f"       {f}" for f in inv["failures"]]
    lines.append("SYSTEM TEST " + ("PASSED" if report.ok else "FAILED"))
    return "\n".join(lines)
