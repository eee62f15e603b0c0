"""Every service is built here, from one set of defaults: settings, JSON logs, request context, error
mapping, health/readiness, database, broker, outbox relay and consumers."""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware import Middleware

from lumiku_common import metrics, tracing
from lumiku_common.db import Database
from lumiku_common.errors import ServiceUnavailable, install_error_handlers
from lumiku_common.logs import configure_logging, get_logger
from lumiku_common.messaging.broker import Broker
from lumiku_common.messaging.consumer import BatchConsumer, BatchHandlers, Consumer, EventHandlers, prune_inbox
from lumiku_common.messaging.outbox import OutboxRelay, pending, prune_published
from lumiku_common.middleware import TOO_LARGE, RequestContextMiddleware
from lumiku_common.migrations import upgrade
from lumiku_common.openapi import without_fastapi_422
from lumiku_common.periodic import periodic
from lumiku_common.retention import Retention
from lumiku_common.routing import Router
from lumiku_common.settings import ServiceSettings

log = get_logger(__name__)

T = TypeVar("T")
Hook = Callable[[FastAPI], Awaitable[None]]
BackgroundLoop = Callable[[], Awaitable[None]]


@dataclass
class ServiceSpec:
    """What makes one service different from the others; everything else is shared."""

    settings: ServiceSettings
    routers: Sequence[APIRouter]
    # Built by the service itself when objects it creates up front need it (see `database_for`).
    db: Database | None = None
    migrations: Path | None = None
    # queue purpose -> handlers; BatchHandlers consume in batches (one transaction per batch)
    consumers: dict[str, EventHandlers | BatchHandlers] = field(default_factory=dict)
    on_startup: Sequence[Hook] = ()
    on_shutdown: Sequence[Hook] = ()
    background: Sequence[BackgroundLoop] = ()  # long-running worker loops, e.g. `periodic(...)`
    # The service's own parts (workflows, clients, ...), built by its create_app; endpoints get them (and the
    # settings) with `Annotated[Kind, Depends(part(Kind))]`.
    parts: Sequence[object] = ()
    title: str = ""
    own_docs: bool = True  # the gateway serves the suite's merged docs instead
    stateless: bool = False  # no database, broker or workers (the gateway)
    public: bool = False  # reachable from the internet (the gateway): metrics only on METRICS_PORT, not /metrics
    readiness: Callable[[FastAPI], Awaitable[dict[str, str]]] | None = None  # replaces db+broker checks
    # Pure-ASGI steps inside the request context (ids, access log, error shape), outermost first: hot paths
    # that answer without FastAPI's routing (the gateway's pass-through).
    middleware: Sequence[Middleware] = ()
    retained: Sequence[Retention] = ()  # rows pruned once they are old enough (idempotency keys, tombstones)
    body_too_large: str = TOO_LARGE  # the 413's message for a body over MAX_REQUEST_BODY_BYTES


class Workers:
    """The outbox relay, consumers and background loops of a service, resilient to a broker that is down."""

    def __init__(self, app: FastAPI, spec: ServiceSpec):
        self.app, self.spec = app, spec
        s = spec.settings
        db: Database = app.state.db
        broker: Broker = app.state.broker
        self.relay = OutboxRelay(
            db,
            broker,
            s.outbox_batch_size,
            s.outbox_poll_seconds,
            service=s.service_name,
            linger=s.outbox_linger_seconds,
        )
        self.consumers: list[Consumer] = [
            BatchConsumer(
                name, db, broker, handlers, queue_prefix=s.queue_prefix, delivery_limit=s.consumer_delivery_limit
            )
            if isinstance(handlers, BatchHandlers)
            else Consumer(
                name,
                db,
                broker,
                handlers,
                queue_prefix=s.queue_prefix,
                prefetch=s.consumer_prefetch,
                delivery_limit=s.consumer_delivery_limit,
            )
            for name, handlers in spec.consumers.items()
        ]
        self.tasks: list[asyncio.Task[Any]] = []
        # Set once every queue is declared, bound and consumed: events published before that are not routed
        # to this service, so readiness waits for it.
        self.consumers_started = asyncio.Event()

    def start(self) -> None:
        prune = periodic("prune", self.prune, self.spec.settings.prune_interval_seconds)
        self.tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
        self.tasks.append(asyncio.create_task(self._start_consumers(), name="consumers"))
        self.tasks.append(asyncio.create_task(prune, name="prune"))
        measure = metrics.refreshing("messaging-metrics", self.measure, self.spec.settings.metrics_refresh_seconds)
        self.tasks.append(asyncio.create_task(measure(), name="messaging-metrics"))
        self.tasks += [asyncio.ensure_future(loop()) for loop in self.spec.background]

    async def prune(self) -> None:
        """One pass: published outbox rows, handled inbox ids and the spec's `retained` rows past their time."""
        s, db = self.spec.settings, self.app.state.db
        pruned = {
            "outbox": await prune_published(db, timedelta(hours=s.outbox_retention_hours)),
            "inbox": await prune_inbox(db, timedelta(days=s.inbox_retention_days)),
        }
        for retained in self.spec.retained:
            try:
                pruned[retained.table.name] = await retained.prune(db)
            except Exception as exc:  # one table's failure leaves the others pruned
                log.warning("prune_failed", table=retained.table.name, error=repr(exc))
        if any(pruned.values()):
            log.info("pruned", **pruned)

    async def measure(self) -> None:
        """Refreshes the outbox and queue gauges (a query and two passive declares per queue)."""
        service = self.spec.settings.service_name
        count, age = await pending(self.app.state.db)
        metrics.OUTBOX_PENDING.labels(service).set(count)
        metrics.OUTBOX_OLDEST_AGE.labels(service).set(age)
        if not self.consumers_started.is_set():
            return
        for consumer in self.consumers:
            ready, dead = await consumer.depths()
            metrics.QUEUE_DEPTH.labels(consumer.name).set(ready)
            metrics.DLQ_DEPTH.labels(consumer.name).set(dead)

    async def _start_consumers(self) -> None:
        delay = 0.5
        pending = list(self.consumers)
        while pending:
            try:
                await pending[0].start()
                pending.pop(0)
            except Exception as exc:
                log.warning("consumer_start_failed", error=repr(exc), retryIn=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
        self.consumers_started.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """Consumers first, while the relay and loops still run: messages in flight finish (or go back to their
        queue) within `consumer_drain_seconds`. Then the loops. Bounded: a loop stuck in I/O must not keep the
        process from exiting."""
        drain = self.spec.settings.consumer_drain_seconds
        await asyncio.gather(
            *(asyncio.wait_for(c.stop(drain), drain + timeout) for c in self.consumers), return_exceptions=True
        )
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            _, stuck = await asyncio.wait(self.tasks, timeout=timeout)
            for task in stuck:
                log.warning("worker_did_not_stop", task=task.get_name())


_heap_frozen = False


def freeze_startup_heap() -> None:
    """What start-up built (modules, schemas, routes, table metadata: ~150k objects in a service) lives as long
    as the process, yet every full collection scanned it again: 75 ms of CPU at once in the avatars service,
    landing on whichever requests were in flight. Moved out of the collector's sight once per process (a test
    process builds many apps: freezing each would keep their garbage for good)."""
    global _heap_frozen
    if not _heap_frozen:
        gc.collect()
        gc.freeze()
        _heap_frozen = True


def create_service(spec: ServiceSpec) -> FastAPI:
    settings = spec.settings
    configure_logging(settings.service_name, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics_server = metrics.MetricsServer(settings.metrics_port) if settings.metrics_port else None
        if metrics_server is not None:
            metrics_server.start()
        try:
            with drain_first(app, settings.shutdown_drain_seconds):
                async with _lifespan(app):
                    freeze_startup_heap()
                    yield
        finally:
            if metrics_server is not None:
                metrics_server.stop()

    @asynccontextmanager
    async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
        if spec.stateless:
            for hook in spec.on_startup:
                await hook(app)
            try:
                yield
            finally:
                for hook in spec.on_shutdown:
                    await hook(app)
            return
        if spec.migrations is not None:
            await upgrade(spec.migrations, settings.database_url)
        app.state.broker = Broker(settings.amqp_url, settings.events_exchange)
        for hook in spec.on_startup:
            await hook(app)
        workers = Workers(app, spec)
        app.state.workers = workers
        if settings.run_workers:
            workers.start()
        log.info("service_started", environment=settings.environment)
        try:
            yield
        finally:
            await workers.stop()
            for hook in spec.on_shutdown:
                await hook(app)
            with suppress(Exception):
                await asyncio.wait_for(app.state.broker.close(), 10)
            await app.state.db.dispose()

    app = FastAPI(
        # Tracing is lumiku_common.tracing's (off unless configured); FastAPI's own would check the global
        # providers on every request (~3 % of a read's CPU) and, once one is set, trace each request twice.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title=spec.title or f"Lumiku {settings.service_name}",
        version=settings.version,
        lifespan=lifespan,
        openapi_url="/openapi.json" if spec.own_docs else None,
        docs_url="/docs" if spec.own_docs else None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.spec = spec
    app.state.draining = False
    app.state.parts = {type(p): p for p in (settings, *spec.parts)}
    if not spec.stateless:
        app.state.db = spec.db or database_for(settings)
    for step in reversed(spec.middleware):
        app.add_middleware(step.cls, *step.args, **step.kwargs)
    tracing.configure(settings.service_name)
    # Added after the pass-through steps so its span's traceparent is bound around them (calls they forward).
    tracing.instrument(app, settings.service_name)
    app.add_middleware(
        RequestContextMiddleware, max_body_bytes=settings.max_request_body_bytes, body_too_large=spec.body_too_large
    )
    app.add_middleware(metrics.HttpMetricsMiddleware, service=settings.service_name)
    install_error_handlers(app)
    app.include_router(health_router(settings, spec.readiness or infrastructure_checks))
    if not spec.public:
        app.include_router(metrics_router())
    for router in spec.routers:
        app.include_router(router)
    without_fastapi_422(app)
    return app


@cache
def part(kind: type[T]) -> Callable[[Request], Awaitable[T]]:
    """The dependency provider of the service's part of type `kind` (one provider per kind, so tests can
    override it: `app.dependency_overrides[part(Kind)] = ...`). Async: a plain function would run in a thread."""

    async def provide(request: Request) -> T:
        found: T = request.app.state.parts[kind]
        return found

    provide.__name__ = f"part_{kind.__name__}"
    return provide


def database_for(settings: ServiceSettings) -> Database:
    """The service's database handle; connects lazily, so it can be built before the app starts."""
    return Database(
        settings.database_url, settings.service_name, settings.db_pool_size, notify_outbox=settings.notifies_outbox
    )


@contextmanager
def drain_first(app: FastAPI, seconds: float) -> Iterator[None]:
    """On SIGTERM, /ready answers 503 at once and the server keeps serving for `seconds` (load balancers see
    the pod leave and stop sending), then the server's own handler starts its graceful shutdown: uvicorn stops
    accepting and waits for in-flight requests (`--timeout-graceful-shutdown`). A second SIGTERM skips the wait.
    Only wraps a handler a server installed (uvicorn's, in the main thread); otherwise does nothing."""
    server_handler = signal.getsignal(signal.SIGTERM)
    if seconds <= 0 or not callable(server_handler) or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        if app.state.draining:
            server_handler(sig, frame)
            return
        app.state.draining = True
        log.info("shutdown_draining", seconds=seconds)
        loop.call_soon_threadsafe(loop.call_later, seconds, server_handler, sig, None)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, server_handler)


def is_stateless(app: FastAPI) -> bool:
    """True for apps built with no database, broker or workers (the gateway)."""
    spec: ServiceSpec = app.state.spec
    return spec.stateless


async def infrastructure_checks(app: FastAPI) -> dict[str, str]:
    checks = {"database": "ok", "broker": "ok"}
    try:
        await asyncio.wait_for(app.state.db.ping(), timeout=2)
    except Exception:
        checks["database"] = "unavailable"
    broker: Broker = app.state.broker
    if not broker.is_connected:
        with suppress(Exception):
            await asyncio.wait_for(broker.connect(), timeout=2)
    if not broker.is_connected:
        checks["broker"] = "unavailable"
    workers: Workers = app.state.workers
    if workers.consumers and workers.tasks and not workers.consumers_started.is_set():
        checks["consumers"] = "starting"
    return checks


def metrics_router() -> APIRouter:
    router = Router(include_in_schema=False)

    @router.get("/metrics")
    def scrape() -> Response:  # sync: a multi-process scrape reads files, off the event loop
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return router


def health_router(settings: ServiceSettings, readiness: Callable[[FastAPI], Awaitable[dict[str, str]]]) -> APIRouter:
    router = Router(tags=["health"])

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": settings.service_name, "version": settings.version}

    @router.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        checks = {"shutdown": "draining"} if request.app.state.draining else await readiness(request.app)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "service": settings.service_name, "checks": checks},
            status_code=200 if ok else 503,
            headers=None if ok else {"Retry-After": str(ServiceUnavailable.retry_after)},
        )

    return router
