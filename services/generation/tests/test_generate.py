"""Generate through the gateway: exact charges, 402, provider behaviours, partial success, SSE."""

from __future__ import annotations

from generation_support import APP, Suite


async def test_count_one_is_charged_15_and_returns_the_avatar(suite: Suite) -> None:
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    response = await suite.generate(headers, project_id, count=1)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True and body["message"] == "Avatar generated successfully"
    assert body["avatar"]["sourceType"] == "ai_generated" and body["avatars"] == [body["avatar"]]
    assert body["avatar"]["generationPrompt"] == "Professional woman with hijab, smiling"
    generation = body["generation"]
    assert generation["status"] == "succeeded"
    assert (generation["cost"], generation["charged"], generation["refunded"]) == (15, 15, 0)
    assert generation["avatarIds"] == [body["avatar"]["id"]]
    assert (await suite.balance(headers))["balance"] == 85
    entries = [e for e in await suite.ledger(headers) if e["type"] == "usage"]
    assert len(entries) == 1 and entries[0]["referenceId"] == generation["id"]
    stored = await suite.avatars(user_id)
    assert [a["id"] for a in stored] == [body["avatar"]["id"]]
    assert APP
