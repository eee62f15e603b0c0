"""The internal holds API (reserve, capture, release), its contract with lumiku_common's client, and refusals."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from lumiku_common.auth import SERVICE_TOKEN_HEADER, ServiceTokens
from lumiku_common.clients.credits import CreditsClient, ReserveRequest
from lumiku_common.errors import Conflict, Gone, InsufficientCredits, NotFound
from lumiku_common.internal import InternalClient
from lumiku_devtools.testing import eventually, token_for

HOLDS = "/internal/credits/holds"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def expire(db, hold_id: str) -> None:
    await db.execute("UPDATE holds SET expires_at = now() - interval '1 second' WHERE id = $1", hold_id)


async def money(db, user: str = "alice") -> tuple[int, int]:
    """(wallet balance, number of ledger entries)."""
    balance = await db.fetchval("SELECT balance FROM wallets WHERE user_id = $1", user)
    entries = await db.fetchval("SELECT count(*) FROM ledger_entries WHERE user_id = $1", user)
    return balance, entries


async def test_reserve_is_201_with_the_hold_and_what_is_left(credits, spy):
    response = await credits.reserve("alice", 15, "gen-1")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["available"] == 85
    hold = body["hold"]
    assert set(hold) == {
        "id",
        "userId",
        "amount",
        "status",
        "referenceId",
        "referenceType",
        "expiresAt",
        "capturedAmount",
    }
    assert hold["userId"] == "alice" and hold["amount"] == 15 and hold["status"] == "active"
    assert hold["referenceId"] == "ref-gen-1" and hold["referenceType"] == "avatar_generation"
    assert hold["capturedAmount"] is None and ISO_Z.match(hold["expiresAt"])
    expires = datetime.fromisoformat(hold["expiresAt"])
    assert timedelta(seconds=890) < expires - datetime.now(UTC) <= timedelta(seconds=900)
    assert await credits.balance("alice") == {
        "success": True,
        "balance": 100,
        "available": 85,
        "held": 15,
        "lowBalance": False,
    }
    [reserved] = await spy.wait_for("credits.reserved")
    assert reserved["data"]["holdId"] == hold["id"] and reserved["data"]["amount"] == 15
    assert reserved["userId"] == "alice" and reserved["subject"] == hold["id"]


async def test_insufficient_credits_is_402_in_the_spec_shape_and_holds_nothing(credits, db):
    await credits.hold("alice", 90, "big")
    response = await credits.reserve("alice", 15, "gen-2")
    assert response.status_code == 402
    assert response.json() == {"error": "Insufficient credits", "required": 15, "current": 10}
    assert await db.fetchval("SELECT count(*) FROM holds") == 1
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'gen-2'") == 0


async def test_full_capture_charges_once_and_names_what_it_paid_for(credits, db, spy):
    hold = await credits.hold("alice", 15, "gen-1")
    response = await credits.capture(hold["id"], "cap-1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["balance"] == 85
    assert body["hold"]["status"] == "captured" and body["hold"]["capturedAmount"] == 15
    entry = await db.fetchrow("SELECT * FROM ledger_entries WHERE type = 'usage'")
    assert entry["amount"] == -15 and entry["balance_after"] == 85 and entry["hold_id"] == hold["id"]
    assert entry["description"] == "Generate avatar gen-1"
    assert (entry["reference_id"], entry["reference_type"]) == ("ref-gen-1", "avatar_generation")
    assert (await credits.balance("alice"))["available"] == 85
    [captured] = await spy.wait_for("credits.captured")
    assert captured["data"] == {
        "holdId": hold["id"],
        "amount": 15,
        "released": 0,
        "referenceId": "ref-gen-1",
        "referenceType": "avatar_generation",
        "balance": 85,
    }


async def test_partial_capture_releases_the_rest(credits, db, spy):
    hold = await credits.hold("alice", 30, "gen-1")
    response = await credits.capture(hold["id"], "cap-1", amount=10)
    assert response.status_code == 200
    assert response.json()["hold"]["capturedAmount"] == 10 and response.json()["balance"] == 90
    assert await credits.balance("alice") == {
        "success": True,
        "balance": 90,
        "available": 90,
        "held": 0,
        "lowBalance": False,
    }
    [captured] = await spy.wait_for("credits.captured")
    assert (captured["data"]["amount"], captured["data"]["released"]) == (10, 20)


async def test_capture_beyond_the_hold_is_409_and_moves_nothing(credits, db):
    hold = await credits.hold("alice", 15, "gen-1")
    response = await credits.capture(hold["id"], "cap-1", amount=16)
    assert response.status_code == 409
    assert response.json() == {"error": "Capture amount exceeds the held amount"}
    assert await money(db) == (100, 1)
    assert (await credits.capture(hold["id"], "cap-1", amount=15)).status_code == 200


async def test_release_frees_the_credits_without_a_ledger_entry(credits, db, spy):
    hold = await credits.hold("alice", 40, "gen-1")
    response = await credits.release(hold["id"], "rel-1", "provider failed")
    assert response.status_code == 200
    assert response.json()["hold"]["status"] == "released"
    assert (await credits.balance("alice"))["available"] == 100
    assert await money(db) == (100, 1)
    [released] = await spy.wait_for("credits.released")
    assert released["data"]["reason"] == "provider failed" and released["data"]["amount"] == 40


async def test_double_capture_and_settling_twice_are_409_and_move_nothing(credits, db):
    hold = await credits.hold("alice", 15, "gen-1")
    assert (await credits.capture(hold["id"], "cap-1")).status_code == 200
    again = await credits.capture(hold["id"], "cap-2")
    assert again.status_code == 409 and again.json() == {"error": "Hold already captured"}
    release = await credits.release(hold["id"], "rel-1")
    assert release.status_code == 409 and release.json() == {"error": "Hold already captured"}
    assert await money(db) == (85, 2)

    other = await credits.hold("alice", 15, "gen-2")
    assert (await credits.release(other["id"], "rel-2")).status_code == 200
    late = await credits.capture(other["id"], "cap-3")
    assert late.status_code == 409 and late.json() == {"error": "Hold already released"}
    assert await money(db) == (85, 2)


async def test_concurrent_captures_of_one_hold_charge_once(credits, db):
    hold = await credits.hold("alice", 15, "gen-1")
    responses = await asyncio.gather(*(credits.capture(hold["id"], f"cap-{i}") for i in range(20)))
    assert sorted(r.status_code for r in responses) == [200] + [409] * 19
    assert await money(db) == (85, 2)


async def test_expired_hold_stops_counting_at_once_and_cannot_be_settled(credits, db):
    hold = await credits.hold("alice", 60, "gen-1")
    await expire(db, hold["id"])
    # The sweep has not run (it runs every 3600 s here): the hold is still 'active' in its row.
    assert await db.fetchval("SELECT status FROM holds WHERE id = $1", hold["id"]) == "active"
    assert (await credits.balance("alice"))["available"] == 100
    capture = await credits.capture(hold["id"], "cap-1")
    assert capture.status_code == 410 and capture.json() == {"error": "Hold expired"}
    release = await credits.release(hold["id"], "rel-1")
    assert release.status_code == 410
    assert await money(db) == (100, 1)
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 1  # only the reserve's


async def test_unknown_hold_is_404(credits):
    for response in (await credits.capture("nope", "k1"), await credits.release("nope", "k2")):
        assert response.status_code == 404 and response.json() == {"error": "Hold not found"}


async def test_reserve_replays_its_key_and_refuses_another_body(credits, db):
    first = await credits.reserve("alice", 15, "gen-1")
    again = await credits.reserve("alice", 15, "gen-1")
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    for amount, changed in ((16, {}), (15, {"description": "other"}), (15, {"ttlSeconds": 60})):
        conflict = await credits.reserve("alice", amount, "gen-1", **changed)
        assert conflict.status_code == 409, changed
    # Another user replaying someone's key gets a conflict, never their hold.
    assert (await credits.reserve("mallory", 15, "gen-1")).status_code == 409
    assert await db.fetchval("SELECT count(*) FROM holds") == 1


async def test_concurrent_replays_of_one_reserve_hold_once(credits, db):
    responses = await asyncio.gather(*(credits.reserve("alice", 15, "same") for _ in range(30)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["hold"]["id"] for r in responses}) == 1
    assert await db.fetchval("SELECT count(*) FROM holds") == 1
    assert (await credits.balance("alice"))["available"] == 85


async def test_capture_replays_its_key_and_refuses_another_body(credits, db):
    hold = await credits.hold("alice", 30, "gen-1")
    first = await credits.capture(hold["id"], "cap-1", amount=10)
    again = await credits.capture(hold["id"], "cap-1", amount=10)
    assert again.status_code == 200 and again.json() == first.json()
    assert (await credits.capture(hold["id"], "cap-1", amount=11)).status_code == 409
    assert (await credits.capture(hold["id"], "cap-1")).status_code == 409
    assert await money(db) == (90, 2)


async def test_a_failed_attempt_leaves_its_key_free(credits):
    await credits.hold("alice", 95, "big")
    assert (await credits.reserve("alice", 15, "retry")).status_code == 402
    grant = {"userId": "alice", "amount": 50, "type": "purchase", "description": "Top-up", "idempotencyKey": "o1"}
    assert (await credits.grant(grant)).status_code == 201
    assert (await credits.reserve("alice", 15, "retry")).status_code == 201


async def test_low_balance_event_fires_once_when_crossing(credits, spy):
    await credits.hold("alice", 40, "a")  # 60 left
    await credits.hold("alice", 15, "b")  # 45 left: crossed
    await credits.hold("alice", 15, "c")  # 30 left: still low, no new event
    await spy.wait_for("credits.reserved", 3)
    [low] = await spy.wait_for("credits.balance_low")
    assert low["data"] == {"available": 45, "threshold": 50} and low["userId"] == "alice"
    # Barrier, not a sleep: a later event from the same outbox (published in order, to a FIFO spy queue).
    sentinel = await credits.hold("alice", 1, "sentinel")  # 29 left: still low, no new event either

    async def sentinel_seen() -> bool:
        return any(e["data"]["holdId"] == sentinel["id"] for e in spy.of_type("credits.reserved"))

    await eventually(sentinel_seen, what="the sentinel's credits.reserved")
    assert len(spy.of_type("credits.balance_low")) == 1


async def test_internal_routes_need_a_service_token_and_are_not_routed_by_the_gateway(credits):
    body = {
        "userId": "alice",
        "amount": 15,
        "referenceId": "r",
        "referenceType": "t",
        "description": "d",
        "idempotencyKey": "k",
    }
    transport = httpx.ASGITransport(app=credits.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://credits") as bare:
        assert (await bare.post(HOLDS, json=body)).status_code == 401
        user_token = token_for(credits.settings, "alice")
        forged = await bare.post(HOLDS, json=body, headers={SERVICE_TOKEN_HEADER: user_token})
        assert forged.status_code == 401
        wrong_secret = ServiceTokens(credits.settings.jwt_secret, "evil").token()
        assert (await bare.post(HOLDS, json=body, headers={SERVICE_TOKEN_HEADER: wrong_secret})).status_code == 401
    via_gateway = await credits.api.post(HOLDS, json=body, headers={SERVICE_TOKEN_HEADER: user_token})
    assert via_gateway.status_code == 404


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"amount": 0}, "too_small"),
        ({"amount": -15}, "too_small"),
        ({"amount": 15.5}, "invalid_type"),
        ({"amount": 15.0}, "invalid_type"),
        ({"amount": True}, "invalid_type"),
        ({"amount": "15"}, "invalid_type"),
        ({"amount": 1_000_001}, "too_big"),
        ({"amount": 2**63}, "too_big"),
        ({"ttlSeconds": 0}, "too_small"),
        ({"ttlSeconds": 1.5}, "invalid_type"),
        ({"userId": ""}, "too_small"),
        ({"userId": "u" * 129}, "too_big"),
        ({"referenceId": "   "}, "too_small"),
        ({"idempotencyKey": ""}, "too_small"),
        ({"description": "\x00"}, "custom"),
        ({"extra": True}, "unrecognized_keys"),
    ],
)
async def test_bad_reserves_are_400_and_change_nothing(credits, db, overrides, code):
    extra = dict(overrides)
    response = await credits.reserve("alice", extra.pop("amount", 15), "k", **extra)
    assert response.status_code == 400, response.text
    assert [d["code"] for d in response.json()["details"]] == [code]
    assert await db.fetchval("SELECT count(*) FROM wallets") == 0


async def test_ttl_beyond_the_configured_maximum_is_400(credits, db):
    response = await credits.reserve("alice", 15, "k", ttlSeconds=credits.settings.credits_max_hold_ttl_seconds + 1)
    assert response.status_code == 400
    assert response.json() == {"error": "ttlSeconds must be at most 86400"}
    assert await db.fetchval("SELECT count(*) FROM holds") == 0


@pytest.mark.parametrize("body", [{"idempotencyKey": "k", "amount": 0}, {"idempotencyKey": "k", "amount": True}, {}])
async def test_bad_captures_are_400(credits, body):
    hold = await credits.hold("alice", 15, "gen-1")
    response = await credits.internal.post(f"{HOLDS}/{hold['id']}/capture", json=body)
    assert response.status_code == 400


async def test_the_shared_client_speaks_this_contract(credits):
    tokens = ServiceTokens(credits.settings.service_token_secret, "avatars")
    internal = InternalClient("http://credits", tokens, transport=httpx.ASGITransport(app=credits.app))
    client = CreditsClient(internal)
    try:
        kwargs = {"user_id": "alice", "reference_id": "av-1", "reference_type": "avatar_upload", "description": "Up"}
        hold = await client.reserve(ReserveRequest(amount=10, idempotency_key="up-1", **kwargs))
        assert hold.status == "active" and hold.amount == 10 and hold.expires_at.tzinfo is not None
        captured = await client.capture(hold.id, "cap-up-1")
        assert captured.status == "captured" and captured.captured_amount == 10
        with pytest.raises(Conflict):
            await client.release(hold.id, "rel-up-1", "late")
        with pytest.raises(InsufficientCredits) as refused:
            await client.reserve(ReserveRequest(amount=91, idempotency_key="up-2", **kwargs))
        assert refused.value.extra == {"required": 91, "current": 90}
        with pytest.raises(NotFound):
            await client.capture("missing", "cap-x")
        short = await client.reserve(ReserveRequest(amount=5, idempotency_key="up-3", ttl_seconds=1, **kwargs))
        await asyncio.sleep(1.1)
        with pytest.raises(Gone):
            await client.capture(short.id, "cap-up-3")
    finally:
        await internal.aclose()
