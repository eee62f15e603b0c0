"""Projects created while the broker is unreachable: every event is published exactly once after it returns."""

from __future__ import annotations

import asyncio
from collections import Counter

from lumiku_devtools.gateway import gateway_for
from lumiku_devtools.testing import EventSpy, TcpProxy, eventually, prepare_database, settings_for_tests
from lumiku_projects.main import create_app
from lumiku_projects.settings import ProjectsSettings

from .conftest import MIGRATIONS

URL = "/api/apps/avatar-creator/projects"


async def test_projects_created_during_a_broker_outage_are_announced_once(settings, alice):
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    # Its own database and exchange: no other app's relay (one still stopping after an earlier test, say) can
    # publish these rows, or rows of its own, while the link is cut.
    outage_settings = settings_for_tests(ProjectsSettings, "outage", amqp_url=proxy.url_for(settings.amqp_url))
    await prepare_database(outage_settings, MIGRATIONS)
    async with (
        EventSpy(settings.amqp_url, outage_settings.events_exchange, "project.created") as spy,
        gateway_for({"projects": create_app(outage_settings)}) as api,
    ):
        proxy.cut()
        created = []
        for i in range(20):
            response = await api.post(URL, json={"name": f"P{i}"}, headers=alice)
            assert response.status_code == 201  # the API does not depend on the broker
            created.append(response.json()["project"]["id"])
        ready = await api.get("/api/health")
        assert ready.json()["services"]["projects"] == "not_ready"
        await asyncio.sleep(0.5)
        assert spy.events == []
        proxy.restore()
        await spy.wait_for("project.created", 20, timeout=30)
        # Barrier, not a sleep: one more project, whose event leaves the outbox after the others' (in order,
        # to a FIFO queue): once the spy has it, any duplicate the relay was going to send has arrived.
        sentinel = await api.post(URL, json={"name": "sentinel"}, headers=alice)
        marker = sentinel.json()["project"]["id"]
        created.append(marker)
        await eventually(lambda: asyncio.sleep(0, any(e["data"]["projectId"] == marker for e in spy.events)))
    counts = Counter(e["data"]["projectId"] for e in spy.events)
    assert set(counts) == set(created) and max(counts.values()) == 1
    await proxy.stop()
