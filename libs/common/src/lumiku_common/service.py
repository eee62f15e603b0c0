"""Every service is built here, from one set of defaults: settings, JSON logs, request context, error
mapping, health/readiness, database, broker, outbox relay and consumers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.middleware import Middleware

from lumiku_common.db import Database
from lumiku_common.errors import ServiceUnavailable, install_error_handlers
from lumiku_common.logs import configure_logging, get_logger
from lumiku_common.messaging.broker import Broker
from lumiku_common.messaging.consumer import BatchConsumer, BatchHandlers, Consumer, EventHandlers, prune_inbox
from lumiku_common.messaging.outbox import OutboxRelay, prune_published
from lumiku_common.middleware import RequestContextMiddleware
from lumiku_common.migrations import upgrade
from lumiku_common.openapi import without_fastapi_422
from lumiku_common.periodic import periodic
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
    readiness: Callable[[FastAPI], Awaitable[dict[str, str]]] | None = None  # replaces db+broker checks
    # Pure-ASGI steps inside the request context (ids, access log, error shape), outermost first: hot paths
    # that answer without FastAPI's routing (the gateway's pass-through).
    middleware: Sequence[Middleware] = ()


class Workers:
    """The outbox relay, consumers and background loops of a service, resilient to a broker that is down."""

    def __init__(self, app: FastAPI, spec: ServiceSpec):
        self.app, self.spec = app, spec
        s = spec.settings
        db: Database = app.state.db
        broker: Broker = app.state.broker
        self.relay = OutboxRelay(db, broker, s.outbox_batch_size, s.outbox_poll_seconds)
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
        prune = periodic("messaging-prune", self._prune, self.spec.settings.prune_interval_seconds)
        self.tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
        self.tasks.append(asyncio.create_task(self._start_consumers(), name="consumers"))
        self.tasks.append(asyncio.create_task(prune, name="messaging-prune"))
        self.tasks += [asyncio.ensure_future(loop()) for loop in self.spec.background]

    async def _prune(self) -> None:
        s, db = self.spec.settings, self.app.state.db
        outbox_rows = await prune_published(db, timedelta(hours=s.outbox_retention_hours))
        inbox_rows = await prune_inbox(db, timedelta(days=s.inbox_retention_days))
        if outbox_rows or inbox_rows:
            log.info("messaging_pruned", outbox=outbox_rows, inbox=inbox_rows)

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
        """Bounded: a loop stuck in I/O must not keep the process from exiting."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            _, stuck = await asyncio.wait(self.tasks, timeout=timeout)
            for task in stuck:
                log.warning("worker_did_not_stop", task=task.get_name())
        for consumer in self.consumers:
            with suppress(Exception):
                await asyncio.wait_for(consumer.stop(), timeout)


def create_service(spec: ServiceSpec) -> FastAPI:
    settings = spec.settings
    configure_logging(settings.service_name, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
        title=spec.title or f"Lumiku {settings.service_name}",
        version=settings.version,
        lifespan=lifespan,
        openapi_url="/openapi.json" if spec.own_docs else None,
        docs_url="/docs" if spec.own_docs else None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.spec = spec
    app.state.parts = {type(p): p for p in (settings, *spec.parts)}
    if not spec.stateless:
        app.state.db = spec.db or database_for(settings)
    for step in reversed(spec.middleware):
        app.add_middleware(step.cls, *step.args, **step.kwargs)
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)
    app.include_router(health_router(settings, spec.readiness or infrastructure_checks))
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


def health_router(settings: ServiceSettings, readiness: Callable[[FastAPI], Awaitable[dict[str, str]]]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": settings.service_name, "version": settings.version}

    @router.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        checks = await readiness(request.app)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "service": settings.service_name, "checks": checks},
            status_code=200 if ok else 503,
            headers=None if ok else {"Retry-After": str(ServiceUnavailable.retry_after)},
        )

    return router
