"""Transaction history through the gateway: filters, pages, and the CSV export of the same rows."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from lumiku_devtools.testing import auth

URL = "/api/credits/transactions"


async def history(credits, user: str = "alice", **params: object) -> dict:
    response = await credits.api.get(URL, params=params, headers=auth(credits.settings, user))
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body


async def export(credits, user: str = "alice", accept: str | None = None, **params: object) -> list[dict[str, str]]:
    headers = auth(credits.settings, user)
    if accept:
        headers["Accept"] = accept
    else:
        params["format"] = "csv"
    response = await credits.api.get(URL, params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    return list(csv.DictReader(io.StringIO(response.text)))


async def activity(credits) -> None:
    """bonus +100, purchase +50, usage -15, a released hold (no entry), usage -7 of a 20 hold, adjustment -3."""
    grant = {"userId": "alice", "amount": 50, "type": "purchase", "description": "Pack", "idempotencyKey": "o1"}
    assert (await credits.grant(grant)).status_code == 201
    first = await credits.hold("alice", 15, "gen-1")
    assert (await credits.capture(first["id"], "c1")).status_code == 200
    assert (await credits.release((await credits.hold("alice", 5, "gen-2"))["id"], "r1")).status_code == 200
    partial = await credits.hold("alice", 20, "gen-3")
    assert (await credits.capture(partial["id"], "c3", amount=7)).status_code == 200
    fix = {"userId": "alice", "amount": -3, "type": "adjustment", "description": "Fix", "idempotencyKey": "o2"}
    assert (await credits.grant(fix)).status_code == 201


async def test_history_is_newest_first_with_running_balances(credits):
    await activity(credits)
    body = await history(credits)
    rows = body["transactions"]
    assert [(r["type"], r["amount"], r["balance"]) for r in rows] == [
        ("adjustment", -3, 125),
        ("usage", -7, 128),
        ("usage", -15, 135),
        ("purchase", 50, 150),
        ("bonus", 100, 100),
    ]
    assert set(rows[0]) == {
        "id",
        "userId",
        "amount",
        "balance",
        "type",
        "description",
        "referenceId",
        "referenceType",
        "createdAt",
    }
    assert rows[1]["referenceId"] == "ref-gen-3" and rows[1]["description"] == "Generate avatar gen-3"
    assert body["pagination"] == {"page": 1, "limit": 100, "total": 5, "totalPages": 1}
    assert body["success"] is True


async def test_history_pages_and_filters(credits):
    await activity(credits)
    page = await history(credits, page=2, limit=2)
    assert [r["amount"] for r in page["transactions"]] == [-15, 50]
    assert page["pagination"] == {"page": 2, "limit": 2, "total": 5, "totalPages": 3}
    usage = await history(credits, type="usage")
    assert [r["amount"] for r in usage["transactions"]] == [-7, -15] and usage["pagination"]["total"] == 2
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await history(credits, **{"from": future}))["transactions"] == []
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert len((await history(credits, **{"from": past, "to": future}))["transactions"]) == 5
    assert (await history(credits, to=past))["transactions"] == []


async def test_history_is_private(credits):
    await activity(credits)
    rows = (await history(credits, user="bob"))["transactions"]
    assert [(r["userId"], r["type"]) for r in rows] == [("bob", "bonus")]


@pytest.mark.parametrize(
    "params",
    [{"type": "gift"}, {"from": "yesterday"}, {"page": 0}, {"limit": 101}, {"format": "xml"}, {"limit": "1e3"}],
)
async def test_bad_history_queries_are_400(credits, params):
    response = await credits.api.get(URL, params=params, headers=auth(credits.settings, "alice"))
    assert response.status_code == 400
    assert response.json()["error"] == "Validation error"


# Times PostgreSQL (or Python) cannot hold once converted to UTC, and times no ledger entry can have: these
# were a 500 (and, for the CSV, a 200 cut off after its header line) before issue 8's fuzzing.
OUT_OF_RANGE = [
    {"from": "0001-01-01T00:00:00+14:00"},
    {"to": "0001-01-01T00:00:00+14:00"},
    {"from": "9999-12-31T23:59:59-14:00"},
    {"to": "9999-12-31T23:59:59Z"},
    {"from": "1969-12-31T23:59:59Z"},
]


@pytest.mark.parametrize("params", OUT_OF_RANGE)
@pytest.mark.parametrize("csv_by", [None, "format", "accept"])
async def test_times_out_of_range_are_400_before_any_byte(credits, params, csv_by):
    headers = auth(credits.settings, "alice")
    if csv_by == "format":
        params = {**params, "format": "csv"}
    elif csv_by == "accept":
        headers["Accept"] = "text/csv"
    response = await credits.api.get(URL, params=params, headers=headers)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "Validation error" and body["details"][0]["path"] == [next(iter(params))]


async def test_times_at_the_edges_of_the_range_are_accepted(credits):
    rows = await history(credits, **{"from": "1970-01-01T00:00:00Z", "to": "9998-12-31T23:59:59+14:00"})
    assert [r["type"] for r in rows["transactions"]] == ["bonus"]
    assert [r["type"] for r in await export(credits, **{"from": "1970-01-01T00:00:00Z"})] == ["bonus"]


async def test_csv_export_matches_the_json_rows(credits):
    await activity(credits)
    rows = (await history(credits))["transactions"]
    exported = await export(credits)
    assert exported == [
        {
            "id": r["id"],
            "createdAt": r["createdAt"],
            "type": r["type"],
            "amount": str(r["amount"]),
            "balance": str(r["balance"]),
            "description": r["description"],
            "referenceId": r["referenceId"] or "",
            "referenceType": r["referenceType"] or "",
        }
        for r in rows
    ]
    assert await export(credits, accept="text/csv") == exported
    usage = await export(credits, type="usage")
    assert [row["amount"] for row in usage] == ["-7", "-15"]


async def test_csv_export_streams_every_row_not_one_page(credits):
    for i in range(120):
        grant = {"userId": "alice", "amount": 1, "type": "bonus", "description": f"b{i}", "idempotencyKey": f"b{i}"}
        assert (await credits.grant(grant)).status_code == 201
    exported = await export(credits, limit=10, page=3)
    assert len(exported) == 121
    assert [int(r["balance"]) for r in exported[:3]] == [220, 219, 218] and exported[-1]["balance"] == "100"


async def test_csv_neutralises_formulas_and_keeps_awkward_text_intact(credits):
    awkward = ['=HYPERLINK("http://evil","x")', "+1+1", "@SUM(A1)", 'comma, "quote"\nnewline', "ünïcödé 🙂"]
    for i, description in enumerate(awkward):
        grant = {"userId": "alice", "amount": 1, "type": "bonus", "description": description, "idempotencyKey": f"a{i}"}
        assert (await credits.grant(grant)).status_code == 201
    exported = [r["description"] for r in await export(credits)][:5]
    assert exported == [
        "ünïcödé 🙂",
        'comma, "quote"\nnewline',
        "'@SUM(A1)",
        "'+1+1",
        '\'=HYPERLINK("http://evil","x")',
    ]
    json_descriptions = [r["description"] for r in (await history(credits))["transactions"]][:5]
    assert json_descriptions[2:] == ["@SUM(A1)", "+1+1", '=HYPERLINK("http://evil","x")']


async def test_csv_for_a_new_user_has_the_bonus(credits):
    exported = await export(credits, user="carol")
    assert [(r["type"], r["amount"], r["balance"]) for r in exported] == [("bonus", "100", "100")]
