"""Wallets, balance and admin grants, through the gateway."""

from __future__ import annotations

import asyncio
import re

import pytest

from lumiku_devtools.testing import auth

BALANCE = "/api/credits/balance"
GRANTS = "/api/credits/grants"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def grant_body(**overrides: object) -> dict:
    return {
        "userId": "alice",
        "amount": 250,
        "type": "purchase",
        "description": "Starter pack",
        "idempotencyKey": "order-1",
        **overrides,
    }


async def test_first_contact_opens_a_wallet_with_the_signup_bonus(credits, db):
    body = await credits.balance("alice")
    assert body == {"success": True, "balance": 100, "available": 100, "held": 0, "lowBalance": False}
    entries = await db.fetch("SELECT amount, balance_after, type, description, reference_type FROM ledger_entries")
    bonus = {"amount": 100, "balance_after": 100, "type": "bonus", "description": "Signup bonus"}
    assert [dict(e) for e in entries] == [{**bonus, "reference_type": "signup"}]


async def test_concurrent_first_requests_pay_the_bonus_exactly_once(credits, db):
    bodies = await asyncio.gather(*(credits.balance("newcomer") for _ in range(40)))
    assert {b["balance"] for b in bodies} == {100}
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE user_id = 'newcomer'") == 1
    assert await db.fetchval("SELECT balance FROM wallets WHERE user_id = 'newcomer'") == 100


async def test_balance_needs_a_token(credits):
    assert (await credits.api.get(BALANCE)).status_code == 401
    bad = await credits.api.get(BALANCE, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


async def test_balance_counts_holds_and_flags_low_balance(credits):
    await credits.hold("alice", 60, "h1")
    assert await credits.balance("alice") == {
        "success": True,
        "balance": 100,
        "available": 40,
        "held": 60,
        "lowBalance": True,
    }


async def test_admin_grant_adds_a_ledger_entry_and_an_event(credits, spy):
    response = await credits.grant(grant_body())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True and body["balance"] == 350
    entry = body["transaction"]
    assert entry["amount"] == 250 and entry["balance"] == 350 and entry["type"] == "purchase"
    assert entry["userId"] == "alice" and entry["description"] == "Starter pack"
    assert entry["referenceType"] == "grant" and entry["referenceId"] == "admin:root"
    assert ISO_Z.match(entry["createdAt"])
    granted = await spy.wait_for("credits.granted", 2)  # the signup bonus, then the purchase
    assert sorted(e["data"]["amount"] for e in granted) == [100, 250]
    assert {e["userId"] for e in granted} == {"alice"}
    assert (await credits.balance("alice"))["balance"] == 350


async def test_grant_replays_its_idempotency_key_and_refuses_another_body(credits, db):
    first = await credits.grant(grant_body())
    again = await credits.grant(grant_body())
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    conflict = await credits.grant(grant_body(amount=251))
    assert conflict.status_code == 409
    assert conflict.json() == {"error": "Idempotency key already used with a different request"}
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE type = 'purchase'") == 1
    assert (await credits.balance("alice"))["balance"] == 350


async def test_concurrent_replays_of_one_grant_write_one_entry(credits, db):
    responses = await asyncio.gather(*(credits.grant(grant_body(idempotencyKey="burst")) for _ in range(20)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["transaction"]["id"] for r in responses}) == 1
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE type = 'purchase'") == 1


async def test_non_admin_grant_is_403_and_changes_nothing(credits, db):
    response = await credits.grant(grant_body(), role="user")
    assert response.status_code == 403
    assert response.json() == {"error": "Admin access required"}
    assert await db.fetchval("SELECT count(*) FROM ledger_entries") == 0
    unauthenticated = await credits.api.post(GRANTS, json=grant_body())
    assert unauthenticated.status_code == 401


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"amount": 0}, "custom"),
        ({"amount": -5}, "custom"),
        ({"amount": -5, "type": "bonus"}, "custom"),
        ({"amount": 1.5}, "invalid_type"),
        ({"amount": 10.0}, "invalid_type"),
        ({"amount": True}, "invalid_type"),
        ({"amount": "10"}, "invalid_type"),
        ({"amount": None}, "invalid_type"),
        ({"amount": 1_000_001}, "too_big"),
        ({"amount": 10**30}, "too_big"),
        ({"amount": -1_000_001, "type": "adjustment"}, "too_small"),
        ({"type": "usage"}, "invalid_enum_value"),
        ({"type": "refund"}, "invalid_enum_value"),
        ({"userId": ""}, "too_small"),
        ({"userId": "a\x01b"}, "custom"),  # no token names such a user
        ({"userId": "a\nb"}, "custom"),
        ({"description": ""}, "too_small"),
        ({"description": "x\x00y"}, "custom"),
        ({"idempotencyKey": "k" * 201}, "too_big"),
        ({"surprise": 1}, "unrecognized_keys"),
    ],
)
async def test_bad_grants_are_400_and_change_nothing(credits, db, overrides, code):
    response = await credits.grant(grant_body(**overrides))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "Validation error"
    assert [d["code"] for d in body["details"]] == [code]
    assert await db.fetchval("SELECT count(*) FROM ledger_entries") == 0


async def test_non_json_grant_is_400(credits):
    headers = {**auth(credits.settings, "root", "admin"), "content-type": "application/json"}
    response = await credits.api.post(GRANTS, content=b"{not json", headers=headers)
    assert response.status_code == 400


async def test_negative_adjustment_cannot_take_held_credits(credits, db):
    await credits.hold("alice", 70, "h1")
    too_much = await credits.grant(grant_body(amount=-31, type="adjustment", idempotencyKey="adj-1"))
    assert too_much.status_code == 402
    assert too_much.json() == {"error": "Insufficient credits", "required": 31, "current": 30}
    ok = await credits.grant(grant_body(amount=-30, type="adjustment", idempotencyKey="adj-2"))
    assert ok.status_code == 201 and ok.json()["balance"] == 70
    assert await credits.balance("alice") == {
        "success": True,
        "balance": 70,
        "available": 0,
        "held": 70,
        "lowBalance": True,
    }
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE type = 'adjustment'") == 1


async def test_grant_with_the_longest_idempotency_key_is_stored_whole(credits, db):
    # The ledger keeps it as "grant:<key>": a 200-character key (the documented maximum) must still fit.
    key = "k" * 200
    first = await credits.grant(grant_body(idempotencyKey=key))
    assert first.status_code == 201, first.text
    again = await credits.grant(grant_body(idempotencyKey=key))
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE type = 'purchase'") == 1
