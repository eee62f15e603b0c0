"""The event contract: the checked-in AsyncAPI document is what the models generate, and the gateway serves
exactly that at /docs/events (CI fails when an event model changes without `--write`)."""

from __future__ import annotations

import json

import httpx
import pytest

from lumiku_common.messaging import asyncapi
from lumiku_common.messaging.events import EVENT_TYPES
from lumiku_devtools.testing import settings_for_tests
from lumiku_gateway.main import create_app
from lumiku_gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit


def test_checked_in_document_matches_the_models() -> None:
    assert asyncapi.CHECKED_IN.read_text() == asyncapi.render(), (
        "event models changed: run `uv run python -m lumiku_common.messaging.asyncapi --write` and commit it"
    )


def test_every_event_has_a_channel_a_message_and_a_publisher() -> None:
    document = json.loads(asyncapi.render())
    assert document["asyncapi"] == "3.0.0"
    for event_type, version in EVENT_TYPES:
        assert document["channels"][event_type]["address"] == event_type
        assert any(
            op["action"] == "send" and op["channel"]["$ref"] == f"#/channels/{event_type}"
            for op in document["operations"].values()
        ), f"nobody publishes {event_type} v{version}"
    used = document["components"]["schemas"]["AvatarUsed"]
    assert set(used["required"]) == {"avatarId", "appId", "action"}


async def test_the_gateway_serves_the_document() -> None:
    app = create_app(settings_for_tests(GatewaySettings, rate_limit_enabled=False))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        response = await client.get("/docs/events")
    assert response.status_code == 200
    assert response.json() == json.loads(asyncapi.CHECKED_IN.read_text())
