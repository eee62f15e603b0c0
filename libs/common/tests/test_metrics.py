"""Prometheus metrics of a service built with create_service, scraped over real TCP: HTTP counts by route
template, consumer outcomes, outbox and queue gauges (real PostgreSQL and RabbitMQ)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter

from lumiku_common.errors import NotFound
from lumiku_common.ids import new_id
from lumiku_common.messaging.consumer import EventHandlers
from lumiku_common.messaging.events import Envelope, ProjectDeleted
from lumiku_common.messaging.outbox import add_event
from lumiku_common.service import ServiceSpec, create_service
from lumiku_common.settings import ServiceSettings
from lumiku_devtools.testing import (
    Metrics,
    delete_queues,
    eventually,
    publish_raw,
    running,
    served,
    settings_for_tests,
    workers_started,
)

from .test_consumer import envelope


def items_service(name: str):
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        if item_id == "missing":
            raise NotFound()
        return {"id": item_id}

    async def always_ready(_):
        return {"self": "ok"}

    settings = settings_for_tests(ServiceSettings, service_name=name)
    return create_service(ServiceSpec(settings=settings, routers=[router], stateless=True, readiness=always_ready))


async def test_http_requests_are_counted_by_route_template_and_status():
    service = f"items{new_id()[-6:].lower()}"
    async with served(items_service(service)) as url, httpx.AsyncClient(base_url=url) as client:
        for path in ("/items/a", "/items/b", "/items/missing", "/nowhere/x", "/items/%00"):
            await client.get(path)
        samples = await Metrics.scrape(client)
    count = "lumiku_http_request_duration_seconds_count"
    assert samples.value(count, service=service, method="GET", route="/items/{item_id}", status="200") == 2
    assert samples.value(count, service=service, method="GET", route="/items/{item_id}", status="404") == 1
    # Unrouted and refused paths share one label: a scanner cannot grow the series.
    assert samples.value(count, service=service, method="GET", route="unmatched", status="404") == 1
    assert samples.value(count, service=service, method="GET", route="unmatched", status="400") == 1
    assert not {"/items/a", "/items/missing", "/nowhere/x"} & samples.label_values()
    timed = "lumiku_http_request_duration_seconds_bucket"
    assert samples.value(timed, service=service, method="GET", route="/items/{item_id}", status="200", le="+Inf") == 2


def consumer_service(settings: ServiceSettings, handlers: EventHandlers):
    return create_service(ServiceSpec(settings=settings, routers=[], consumers={"common.metered": handlers}))


@pytest.fixture
async def metered(db, settings) -> AsyncIterator[ServiceSettings]:
    """The common test database (emptied by `db`); gauges refreshed by the test alone."""
    own = settings.model_copy(
        update={"queue_prefix": f"{settings.queue_prefix}metrics.", "metrics_refresh_seconds": 3600}
    )
    yield own
    await delete_queues(own, "common.metered")


async def test_consumer_outcomes_queue_and_dlq_depth_are_exposed(db, metered):
    handlers, fail_once = EventHandlers(), set()

    @handlers.on(ProjectDeleted)
    async def on_deleted(session, event: ProjectDeleted, env: Envelope) -> None:
        if event.project_id == "flaky" and env.id not in fail_once:
            fail_once.add(env.id)
            raise RuntimeError("transient")

    app = consumer_service(metered.model_copy(update={"consumer_delivery_limit": 2}), handlers)
    queue = f"{metered.queue_prefix}common.metered"
    async with running(app) as client:
        await workers_started(app)
        await publish_raw(metered, "project.deleted", envelope("p1"))
        await publish_raw(metered, "project.deleted", envelope("flaky"))
        await publish_raw(metered, "project.deleted", b"not json")

        async def settled() -> Metrics | None:
            await app.state.workers.measure()
            samples = await Metrics.scrape(client)
            outcomes = {o: samples.value("lumiku_consumer_messages_total", queue=queue, outcome=o) for o in
                        ("handled", "retried", "dead_lettered")}  # fmt: skip
            expected = {"handled": 2, "retried": 1, "dead_lettered": 1}
            return samples if outcomes == expected and samples.value("lumiku_dlq_messages", queue=queue) else None

        samples = await eventually(settled, what="every message finished and measured")
    assert samples.value("lumiku_dlq_messages", queue=queue) == 1
    assert samples.value("lumiku_queue_messages", queue=queue) == 0
    assert samples.value("lumiku_consumer_handler_duration_seconds_count", queue=queue) == 3  # 2 ok + 1 failed


async def test_outbox_pending_rows_and_oldest_age_are_exposed(db, metered):
    # No relay runs here (an API process whose workers run elsewhere), so the row stays pending.
    app = consumer_service(metered.model_copy(update={"run_workers": False}), EventHandlers())
    async with running(app) as client:
        await app.state.workers.measure()
        before = await Metrics.scrape(client)
        assert before.value("lumiku_outbox_pending", service="common") == 0
        assert before.value("lumiku_outbox_oldest_pending_age_seconds", service="common") == 0
        async with app.state.db.unit_of_work() as session:
            await add_event(session, ProjectDeleted(project_id="p1"), user_id="u")
        await app.state.workers.measure()
        after = await Metrics.scrape(client)
    assert after.value("lumiku_outbox_pending", service="common") == 1
    age = after.value("lumiku_outbox_oldest_pending_age_seconds", service="common")
    assert age is not None and 0 < age < 60
