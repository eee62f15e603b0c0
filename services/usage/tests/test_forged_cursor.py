"""Cursors are opaque to clients but decoded from what they send: whatever a client forges in one is a clear
400, never a 500 from the database."""

from __future__ import annotations

import base64

from usage_support import Suite


def forged(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def test_a_cursor_whose_id_holds_control_characters_is_400(suite: Suite) -> None:
    _, alice = suite.user()
    avatar_id = await suite.avatar(alice)
    # PostgreSQL refuses NUL in text: the id was sent to the keyset comparison as it was and failed there.
    for row_id in ("a\x00b", "\x00", "x\x1b[2J"):
        response = await suite.history(alice, avatar_id, cursor=forged(f"2025-01-01T00:00:00+00:00|{row_id}"))
        assert (response.status_code, response.json()["error"]) == (400, "Validation error"), (row_id, response.text)
