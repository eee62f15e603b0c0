"""One trace per upload, across HTTP and AMQP: the gateway's request, the avatars service, its hold at credits,
the relay's publish of the capture and the credits consumer that handles it (an in-memory exporter)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from avatars_samples import jpeg
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lumiku_common import tracing
from lumiku_devtools.testing import eventually

from .conftest import Suite, _prepared, _settings, suite_for


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[Suite, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    assert tracing.configure("avatars-suite", exporter)
    try:
        projects, credits, avatars = _settings(tmp_path, "traced")
        await _prepared(projects, credits, avatars)
        async with suite_for(avatars, projects, credits) as suite:  # built while tracing is on: instrumented
            yield suite, exporter
    finally:
        tracing.shutdown()


def service_of(span: Any) -> str | None:
    return span.attributes.get(tracing.SERVICE_ATTRIBUTE)


async def test_an_upload_is_one_trace_from_the_gateway_through_the_relay_to_the_consumer(traced):
    suite, exporter = traced
    _, headers = suite.user()
    project = await suite.project(headers)
    exporter.clear()

    response = await suite.upload(headers, project, jpeg(64, 64))
    assert response.status_code == 201, response.text
    [request] = [
        s for s in exporter.get_finished_spans()
        if service_of(s) == "gateway" and s.kind == SpanKind.SERVER and s.attributes.get("http.method") == "POST"
    ]  # fmt: skip
    trace_id = request.context.trace_id

    def of_trace() -> list[Any]:
        return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]

    async def captured() -> list[Any] | None:
        spans = of_trace()  # until credits, handling the capture, has published its own credits.captured
        return spans if any(s.name == "credits.captured publish" for s in spans) else None

    spans = await eventually(captured, what="the capture handled by credits' consumer, in the upload's trace")
    # Each service's request span (in-process here, so the services' spans are INTERNAL children, not SERVER).
    handled = {(service_of(s), s.attributes["http.route"]) for s in spans if "http.route" in s.attributes}
    assert {
        ("gateway", "/api/{path:path}"),
        ("avatars", "/api/apps/avatar-creator/projects/{project_id}/avatars"),
        ("credits", "/internal/credits/holds"),  # the hold avatars takes before storing
    } <= handled
    [publish] = [s for s in spans if s.name == "credits.capture publish"]
    [consume] = [s for s in spans if s.kind == SpanKind.CONSUMER and "credits.commands" in s.name]
    [announce] = [s for s in spans if s.name == "credits.captured publish"]
    assert (publish.kind, service_of(publish), service_of(consume)) == (SpanKind.PRODUCER, "avatars", "credits")
    assert consume.parent is not None and consume.parent.span_id == publish.context.span_id
    assert announce.parent is not None and announce.parent.span_id == consume.context.span_id  # and on it goes
    by_id = {s.context.span_id: s for s in spans}
    writer = by_id[publish.parent.span_id]  # the row carried the span that wrote it: avatars' request
    assert (service_of(writer), writer.attributes.get("http.route")) == (
        "avatars",
        "/api/apps/avatar-creator/projects/{project_id}/avatars",
    )
    assert any(s.attributes.get("db.system") == "postgresql" for s in spans)  # asyncpg instrumented too
