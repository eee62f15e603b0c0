"""Prometheus metrics of every service and worker, defined once (names, labels, buckets) and exposed once.

Exposure: `/metrics` on each service's own app (services are reachable only inside the cluster), and, when
`METRICS_PORT` is set, prometheus_client's HTTP server on that port — how the standalone worker
(`python -m lumiku_common.worker SERVICE`, whose app answers probes only) and the gateway (public, so its app
has no `/metrics` at all) are scraped.

Several uvicorn workers in one container: set `PROMETHEUS_MULTIPROC_DIR` to an empty directory, writable and
private to the container (emptied at its start), before the processes start. Each process then writes its
values to files there and every scrape merges them (counters and histograms summed, gauges from the
database take the most recent value); the metrics port is bound by whichever worker starts first.

Label values are bounded: routes are templates (`/projects/{project_id}`), never raw paths; queues, services,
stages and kinds are fixed by the code. Gauges that need a query are refreshed by background loops (every
`METRICS_REFRESH_SECONDS`) where the workers run, never per request or per scrape.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextlib import suppress
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lumiku_common.logs import get_logger
from lumiku_common.periodic import periodic

log = get_logger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Set by an endpoint that routes by itself (the gateway's catch-all proxy): the template to count it under.
ROUTE_LABEL_KEY = "lumiku.route"
UNMATCHED = "unmatched"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0)

# --- HTTP ---------------------------------------------------------------------------------------------------
# One histogram gives rate (its _count), errors (_count by status) and latency, for one observation per request
# (as OpenTelemetry's http.server.request.duration does).
HTTP_DURATION = Histogram(
    "lumiku_http_request_duration_seconds",
    "HTTP requests answered: time until the handler returned, by route template and status",
    ["service", "method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
)
RATE_LIMITED = Counter("lumiku_gateway_rate_limited_total", "Requests refused with 429 by a rate-limit rule", ["rule"])

# --- outbox and relay ---------------------------------------------------------------------------------------
OUTBOX_PENDING = Gauge(
    "lumiku_outbox_pending", "Outbox rows not yet published", ["service"], multiprocess_mode="mostrecent"
)
OUTBOX_OLDEST_AGE = Gauge(
    "lumiku_outbox_oldest_pending_age_seconds",
    "Age of the oldest unpublished outbox row (0 when none)",
    ["service"],
    multiprocess_mode="mostrecent",
)
OUTBOX_PUBLISHED = Counter("lumiku_outbox_published_total", "Outbox rows published and confirmed", ["service"])
OUTBOX_PUBLISH_FAILURES = Counter(
    "lumiku_outbox_publish_failures_total", "Outbox rows whose publish failed (retried later)", ["service"]
)
EVENTS_UNROUTABLE = Counter(
    "lumiku_events_unroutable_total", "Events the broker returned: no queue is bound to their type", ["routing_key"]
)

# --- consumers and queues -----------------------------------------------------------------------------------
CONSUMED = Counter(
    "lumiku_consumer_messages_total",
    "Messages a consumer finished with, by outcome: handled, duplicate, retried, deferred, dead_lettered",
    ["queue", "outcome"],
)
HANDLER_DURATION = Histogram(
    "lumiku_consumer_handler_duration_seconds",
    "Time to handle one message (or one batch, in batch mode), commit included",
    ["queue"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "lumiku_queue_messages", "Messages ready in a consumer's queue", ["queue"], multiprocess_mode="mostrecent"
)
DLQ_DEPTH = Gauge(
    "lumiku_dlq_messages", "Messages in a consumer's dead-letter queue", ["queue"], multiprocess_mode="mostrecent"
)

# --- credits ------------------------------------------------------------------------------------------------
HOLDS_ACTIVE = Gauge("lumiku_credits_holds_active", "Active holds not yet expired", multiprocess_mode="mostrecent")
HOLDS_OVERDUE = Gauge(
    "lumiku_credits_holds_overdue",
    "Holds still active past their expiry (the sweeper has not marked them yet)",
    multiprocess_mode="mostrecent",
)
HOLDS_EXPIRED = Counter(
    "lumiku_credits_holds_expired_total", "Holds expired by the sweeper: work that neither captured nor released"
)

# --- generation ---------------------------------------------------------------------------------------------
GENERATION_JOBS = Gauge(
    "lumiku_generation_jobs", "Unfinished generation jobs by status", ["status"], multiprocess_mode="mostrecent"
)
GENERATION_FINISHED = Counter(
    "lumiku_generation_jobs_finished_total", "Generation jobs that reached a terminal status", ["status"]
)
PROVIDER_DURATION = Histogram(
    "lumiku_provider_request_duration_seconds",
    "Time of one call to the AI provider, by outcome (ok or the error kind)",
    ["provider", "outcome"],
    buckets=_SLOW_BUCKETS,
)
PROVIDER_ERRORS = Counter(
    "lumiku_provider_errors_total",
    "Failed calls to the AI provider by kind: loading, rate_limited, failed (5xx, timeouts), rejected (4xx)",
    ["provider", "kind"],
)

# --- avatars ------------------------------------------------------------------------------------------------
UPLOAD_STAGE = Histogram(
    "lumiku_avatars_upload_stage_duration_seconds",
    "Time of each stage of the upload pipeline",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)


def consumed(queue: str, outcome: str, count: int = 1) -> None:
    if count:
        CONSUMED.labels(queue, outcome).inc(count)


class timed:  # lower case: used like `suppress`
    """Observes the time spent in the block on `histogram` (labelled)."""

    __slots__ = ("_child", "_started")

    def __init__(self, histogram: Histogram, *labels: str):
        self._child = histogram.labels(*labels)

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        self._child.observe(time.perf_counter() - self._started)


# --- HTTP middleware ----------------------------------------------------------------------------------------


class HttpMetricsMiddleware:
    """Times every HTTP request by route template and status; pure ASGI, label children cached (templates
    and statuses are few), so a request costs two clock reads and one histogram observation."""

    def __init__(self, app: ASGIApp, service: str):
        self.app, self.service = app, service
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            key = (scope["method"], route_template(scope), status)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = HTTP_DURATION.labels(self.service, key[0], key[1], str(status))
            child.observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    label = scope.get(ROUTE_LABEL_KEY)
    if label is not None:
        return str(label)
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


# --- exposure -----------------------------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def scrape_registry() -> CollectorRegistry:
    """What a scrape reads: this process's registry, or every process's files in multi-process mode."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def exposition() -> tuple[bytes, str]:
    return generate_latest(scrape_registry()), CONTENT_TYPE_LATEST


class MetricsServer:
    """prometheus_client's HTTP server on its own port; absent when another worker of this container holds
    the port (multi-process mode: any one of them serves everyone's values)."""

    def __init__(self, port: int, host: str = "0.0.0.0"):
        self.port, self.host = port, host
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self.port, self.host, registry=scrape_registry())
        except OSError as exc:
            log.info("metrics_port_unavailable", port=self.port, error=repr(exc), multiprocess=bool(multiprocess_dir()))
            return
        log.info("metrics_serving", port=self.port)

    def stop(self) -> None:
        if self._server is not None:
            with suppress(Exception):
                self._server.shutdown()
                self._server.server_close()
            self._server = None


# --- gauges refreshed by background loops -------------------------------------------------------------------


def set_all(gauge: Gauge, values: Iterable[tuple[str, float]], known: Iterable[str]) -> None:
    """Sets `gauge{label}` for every known label value, 0 for those absent from `values` (a status that
    emptied must read 0, not keep its last count)."""
    found = dict(values)
    for label in known:
        gauge.labels(label).set(found.get(label, 0))


def refreshing(
    name: str, measure: Callable[[], Awaitable[None]], every: float
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A background loop that refreshes gauges read from the database or broker every `every` seconds
    (METRICS_REFRESH_SECONDS), never per request; the first refresh after one interval: start-up is busy enough."""
    return lambda: periodic(name, measure, every, first_delay=every)
