"""Avatar ids a client (or a sibling app on the broker) can send that no avatar can have: control characters, a
lone UTF-16 surrogate. Each is a 4xx (or, on the broker, that event dead-lettered), never a 5xx or a stall."""

from __future__ import annotations

import json

import pytest
from usage_support import APP, Suite, used_envelope

from lumiku_devtools.testing import read_dlq
from lumiku_usage.handlers import AVATAR_USED

BODY = {"appId": "pose-generator", "appName": "Pose Generator", "action": "generate_pose"}


@pytest.mark.parametrize("avatar_id", ["a\x01b", "\x1b[2J", "x\x7f", "\ud800", "a\udfffb"])
async def test_track_usage_of_an_impossible_avatar_id_is_4xx(suite: Suite, avatar_id: str) -> None:
    _, alice = suite.user()
    body = json.dumps({**BODY, "avatarId": avatar_id})  # as bytes: httpx refuses to encode a lone surrogate
    response = await suite.api.post(
        f"{APP}/track-usage", content=body, headers={**alice, "Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, (avatar_id, response.status_code, response.text)


async def test_an_avatar_used_event_with_a_control_character_in_its_avatar_id_is_dead_lettered(suite: Suite) -> None:
    """Such an id went to avatars' owner lookup, which refuses it (400), read as "avatars unavailable": the event
    was deferred, never dead-lettered, holding a prefetch slot for good (enough of them stop the queue)."""
    user_id, _ = suite.user()
    body = used_envelope(user_id, "a\x01b")
    await suite.publish_used(body)
    message = await read_dlq(suite.settings.amqp_url, f"{suite.settings.queue_prefix}{AVATAR_USED}.dlq")
    assert message.body == body
    assert "poison" in str(message.headers["x-dead-letter-reason"]), message.headers


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_metadata_with_nan_or_infinity_is_400_and_records_nothing(suite: Suite, number: str) -> None:
    """Python's JSON reader takes NaN and Infinity (and 1e999 as infinity); PostgreSQL's jsonb refuses them: the
    use's insert failed and answered 500."""
    _, alice = suite.user()
    avatar_id = await suite.avatar(alice)
    body = json.dumps({**BODY, "avatarId": avatar_id, "metadata": {"score": 0}}).replace("0}", f"{number}}}")
    response = await suite.api.post(
        f"{APP}/track-usage", content=body, headers={**alice, "Content-Type": "application/json"}
    )
    assert (response.status_code, response.json()["error"]) == (400, "Validation error"), response.text
    assert await suite.rows(avatar_id) == 0


async def test_an_avatar_used_event_with_nan_in_its_metadata_is_dead_lettered_at_once(suite: Suite) -> None:
    user_id, alice = suite.user()
    avatar_id = await suite.avatar(alice)
    body = used_envelope(user_id, avatar_id, metadata={"score": 0}).replace(b'"score":0', b'"score":NaN')
    await suite.publish_used(body)
    message = await read_dlq(suite.settings.amqp_url, f"{suite.settings.queue_prefix}{AVATAR_USED}.dlq")
    assert message.body == body
    assert "poison" in str(message.headers["x-dead-letter-reason"]), message.headers
    assert await suite.rows(avatar_id) == 0


@pytest.mark.parametrize("depth", [33, 500])
async def test_metadata_nested_too_deep_is_400_and_records_nothing(suite: Suite, depth: int) -> None:
    """500 levels (Python's JSON reader takes ~1000) overflowed the NUL check's recursion, and past ~250 pydantic
    cannot serialize the answer: both were a 500."""
    _, alice = suite.user()
    avatar_id = await suite.avatar(alice)
    metadata = '{"a":' * depth + "1" + "}" * depth
    body = json.dumps({**BODY, "avatarId": avatar_id, "metadata": None}).replace("null", metadata)
    response = await suite.api.post(
        f"{APP}/track-usage", content=body, headers={**alice, "Content-Type": "application/json"}
    )
    assert (response.status_code, response.json()["error"]) == (400, "Validation error"), response.text
    assert await suite.rows(avatar_id) == 0
    nested = '{"a":' * 32 + "1" + "}" * 32  # 32 levels, the most that is kept
    body = json.dumps({**BODY, "avatarId": avatar_id, "metadata": None}).replace("null", nested)
    response = await suite.api.post(
        f"{APP}/track-usage", content=body, headers={**alice, "Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text
