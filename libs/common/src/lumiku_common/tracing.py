"""OpenTelemetry traces across HTTP and AMQP, on only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

Off (the default) nothing is instrumented and every hook here returns at once: no provider, no spans.
On, one trace follows a request everywhere it goes:
- HTTP in: FastAPI instrumentation (a server span per request, parent taken from `traceparent`); the span
  then becomes the request's `traceparent` (logs, `context_headers()`), so calls to other services and the
  gateway's proxying carry it even through transports httpx instrumentation does not wrap.
- HTTP out: a CLIENT span per call between services (`calling`, used by lumiku_common.http_transport, which
  httpx instrumentation does not wrap); other httpx calls (the AI provider) by httpx instrumentation.
- SQL: asyncpg instrumentation.
- Outbox: the row stores the traceparent of the span that wrote it; the relay's publish is a PRODUCER span
  child of it, and the message carries the publish span's traceparent.
- Consumers: a CONSUMER span per message, child of the publish; events it stages continue the trace.
aio-pika's own instrumentation is not used: the publish happens in the relay, long after the request, and
batch consumers take messages off the queue before handling them, so spans are made here instead.
The exporter and resource follow the standard `OTEL_*` variables (endpoint, headers, `OTEL_SERVICE_NAME`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Receive, Scope, Send

from lumiku_common.context import bound, traceparent_var

if TYPE_CHECKING:
    from opentelemetry.trace import Span

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
SERVICE_ATTRIBUTE = "lumiku.service"

_propagator = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_instrumentors: list[Any] = []


def configure(service: str, exporter: SpanExporter | None = None) -> bool:
    """Turns tracing on for this process (once): OTLP when the endpoint is set, or `exporter` (tests).
    Returns whether tracing is on."""
    global _provider, _tracer
    if _provider is not None:
        return True
    if exporter is None:
        if not os.environ.get(ENDPOINT_ENV):
            return False
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor: Any = BatchSpanProcessor(OTLPSpanExporter())
    else:
        processor = SimpleSpanProcessor(exporter)
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}))
    provider.add_span_processor(processor)
    _instrument_libraries(provider)
    _provider, _tracer = provider, provider.get_tracer("lumiku")
    return True


def _instrument_libraries(provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    for instrumentor in (HTTPXClientInstrumentor(), AsyncPGInstrumentor()):
        instrumentor.instrument(tracer_provider=provider)
        _instrumentors.append(instrumentor)


def shutdown() -> None:
    """Flushes and turns tracing off again (tests; the process's exit flushes otherwise)."""
    global _provider, _tracer
    for instrumentor in _instrumentors:
        instrumentor.uninstrument()
    _instrumentors.clear()
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = None


def enabled() -> bool:
    return _provider is not None


def instrument(app: FastAPI, service: str) -> None:
    """Server spans for `app`'s requests. Call before the request-context middleware is added: the
    middleware added here runs inside it and makes the server span the request's traceparent."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    def name_service(span: Any, _: Any) -> None:
        if span.is_recording():
            span.set_attribute(SERVICE_ATTRIBUTE, service)

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=_provider, server_request_hook=name_service, exclude_spans=["receive", "send"]
    )
    app.add_middleware(SpanTraceparentMiddleware)


class SpanTraceparentMiddleware:
    """Binds the current span as the request's traceparent (logs, calls out, outbox rows)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with bound((traceparent_var, current_traceparent() or traceparent_var.get())):
            await self.app(scope, receive, send)


def current_traceparent() -> str | None:
    """The W3C traceparent of the active span; None when tracing is off or no span is active."""
    if _provider is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


@contextmanager
def calling(method: str, host: str, path: str, headers: list[tuple[str, str]]) -> Iterator[Span | None]:
    """A CLIENT span for a call to another service; `headers` (the call's own list, updated in place) then carry
    its traceparent. Yields the span (None when tracing is off) for the answer's status."""
    if _tracer is None:
        yield None
        return
    attributes = {"http.request.method": method, "server.address": host, "url.path": path}
    with _tracer.start_as_current_span(method, kind=SpanKind.CLIENT, attributes=attributes) as span:
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        # The span's own traceparent replaces the request's.
        headers[:] = [(k, v) for k, v in headers if k.lower() not in carrier] + list(carrier.items())
        yield span


@contextmanager
def publishing(routing_key: str, headers: dict[str, Any], service: str) -> Iterator[dict[str, Any]]:
    """A PRODUCER span for publishing an outbox row, child of the span that wrote it; yields the headers to
    send (carrying the publish span's traceparent)."""
    if _tracer is None:
        yield headers
        return
    with _messaging_span(f"{routing_key} publish", SpanKind.PRODUCER, headers, service, routing_key):
        sent = dict(headers)
        _propagator.inject(sent)
        yield sent


@contextmanager
def consuming(queue: str, headers: Mapping[str, Any], service: str) -> Iterator[str | None]:
    """A CONSUMER span for handling one message, child of its publish; yields its traceparent (None when
    tracing is off)."""
    if _tracer is None:
        yield None
        return
    with _messaging_span(f"{queue} process", SpanKind.CONSUMER, headers, service, queue):
        yield current_traceparent()


@contextmanager
def _messaging_span(
    name: str, kind: SpanKind, headers: Mapping[str, Any], service: str, destination: str
) -> Iterator[None]:
    assert _tracer is not None
    attributes = {SERVICE_ATTRIBUTE: service, "messaging.system": "rabbitmq", "messaging.destination.name": destination}
    with _tracer.start_as_current_span(name, context=_extract(headers), kind=kind, attributes=attributes):
        yield


def _extract(headers: Mapping[str, Any]) -> Any:
    carrier = {k: v.decode(errors="replace") if isinstance(v, bytes) else str(v) for k, v in headers.items()}
    return _propagator.extract(carrier)
