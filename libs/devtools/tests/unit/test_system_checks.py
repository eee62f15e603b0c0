"""The system test's checker on hand-made snapshots: the money arithmetic, usage exactly once, storage against
rows, dead letters accounted for, and the rule for 5xx answers during faults."""

from __future__ import annotations

from collections import Counter
from typing import Any

from lumiku_devtools.system.invariants import (
    AvatarRow,
    DlqEntry,
    Snapshot,
    Work,
    check_avatars_announced,
    check_dlq,
    check_drained,
    check_holds,
    check_ledgers,
    check_objects,
    check_usage,
    check_work,
    expected_spend,
    generation_price,
)
from lumiku_devtools.system.timeline import Exchange, Window, classify


def avatar(user: str = "u1", source: str = "upload", uses: int = 0, key: str = "") -> AvatarRow:
    return AvatarRow(user, source, (f"avatars/{key}/original.png", f"avatars/{key}/thumbnail.jpg") if key else (), uses)


def snapshot(**overrides: Any) -> Snapshot:
    values: dict[str, Any] = {
        "wallets": {},
        "ledger_sums": {},
        "grants": {},
        "announced": {},
        "deleted": set(),
        "avatars": {},
        "generated_by": {},
        "holds_overdue": [],
        "holds_active": 0,
        "usage_rows": {},
        "accepted_uses": {},
        "uncertain_uses": {},
        "objects": set(),
        "outbox_pending": {},
        "queue_depths": {},
        "dlq": [],
        "injected_ids": set(),
    }
    return Snapshot(**(values | overrides))


def test_a_generation_costs_15_for_the_first_avatar_and_10_for_each_variation() -> None:
    assert [generation_price(n) for n in range(5)] == [0, 15, 25, 35, 45]


def test_spend_counts_uploads_generations_by_job_and_deleted_avatars_too() -> None:
    state = snapshot(
        announced={
            "up1": ("u1", "upload"),
            "up2": ("u1", "upload"),  # deleted later: deleting refunds nothing
            "g1": ("u1", "ai_generated"),
            "g2": ("u1", "ai_generated"),
            "g3": ("u2", "ai_generated"),
            "saved": ("u2", "ai_generated"),  # a saved preview: no generation job made it
        },
        deleted={"up2"},
        generated_by={"g1": "job-a", "g2": "job-a", "g3": "job-b"},
    )
    assert expected_spend(state) == {"u1": 10 + 10 + 25, "u2": 15 + 15}


def test_a_ledger_must_sum_to_its_wallet_and_to_bonus_plus_grants_minus_spend() -> None:
    announced = {"a1": ("u1", "upload")}
    good = snapshot(wallets={"u1": 290}, ledger_sums={"u1": 290}, grants={"u1": 200}, announced=announced)
    assert check_ledgers(good).ok and check_ledgers(good).checked == 1

    drifted = snapshot(wallets={"u1": 290}, ledger_sums={"u1": 280}, grants={"u1": 200}, announced=announced)
    assert check_ledgers(drifted).failures == ["u1: ledger sums to 280, wallet says 290"]

    unpaid = snapshot(wallets={"u1": 300}, ledger_sums={"u1": 300}, grants={"u1": 200}, announced=announced)
    assert len(check_ledgers(unpaid).failures) == 1  # an avatar nobody paid for

    no_wallet = snapshot(announced=announced)
    assert check_ledgers(no_wallet).failures == ["u1: avatars worth 10 credits but no wallet"]


def test_every_row_was_announced_and_every_announced_undeleted_avatar_has_a_row() -> None:
    state = snapshot(
        announced={"a": ("u1", "upload"), "b": ("u1", "upload"), "c": ("u1", "upload")},
        deleted={"b"},
        avatars={"a": avatar(), "x": avatar()},
    )
    assert sorted(check_avatars_announced(state).failures) == [
        "c: announced, not deleted, no row",
        "x: row without avatar.created",
    ]


def test_usage_recorded_exactly_once_and_counters_equal_history() -> None:
    state = snapshot(
        avatars={"a": avatar(uses=3), "b": avatar(uses=1), "gone": avatar(uses=0)},
        usage_rows={"a": Counter({"r1": 1, "r2": 1, "maybe": 1}), "b": Counter({"r3": 2})},
        accepted_uses={"a": {"r1", "r2"}, "b": {"r3", "r4"}, "deleted-avatar": {"r9"}},
        uncertain_uses={"a": {"maybe", "maybe-not"}},
    )
    failures = check_usage(state).failures
    assert failures == [
        "b: uses missing: ['r4']",
        "b: uses recorded twice: ['r3']",
        "b: usageCount 1 != history 2",
    ]
    assert check_usage(snapshot(avatars={"a": avatar()}, usage_rows={"a": Counter({"x": 1})})).failures == [
        "a: uses never sent: ['x']",
        "a: usageCount 0 != history 1",
    ]


def test_objects_match_rows_both_ways() -> None:
    state = snapshot(
        avatars={"a": avatar(key="k1"), "b": avatar(key="k2")},
        objects={"avatars/k1/original.png", "avatars/k1/thumbnail.jpg", "avatars/k2/original.png", "avatars/k3/x.png"},
    )
    assert check_objects(state).failures == [
        "object without a row: avatars/k3/x.png",
        "row without its object: avatars/k2/thumbnail.jpg",
    ]


def test_holds_outboxes_and_queues() -> None:
    assert check_holds(snapshot(holds_overdue=["h1"], holds_active=2)).failures == ["hold h1 active past its expiry"]
    drained = check_drained(snapshot(outbox_pending={"credits": 0, "avatars": 2}, queue_depths={"q": 1, "r": 0}))
    assert drained.failures == ["outbox of avatars: 2 unpublished", "queue q: 1 waiting"]


def test_dead_letters_are_injected_faults_or_uses_of_deleted_avatars() -> None:
    state = snapshot(
        injected_ids={"bad1", "bad2", "never-arrived"},
        deleted={"gone"},
        dlq=[
            DlqEntry("usage.avatar-used", "bad1", "", "poison"),
            DlqEntry("usage.avatar-used", "bad2", "a1", "forged owner"),
            DlqEntry("usage.avatar-used", "late", "gone", "avatar deleted"),
            DlqEntry("generation.jobs", "cmd", "", "failed 5 times"),
        ],
    )
    check = check_dlq(state)
    assert check.notes == {"injected": 2, "use of a deleted avatar": 1}
    assert check.failures == ["generation.jobs: cmd (failed 5 times)", "injected event never-arrived not dead-lettered"]


def test_a_run_that_got_nothing_done_fails() -> None:
    idle = Work(
        requests=100, answered_2xx=10, users=4, avatars_created=0, avatars_generated=0, uses_accepted=0, wallets=4
    )
    assert len(check_work(idle).failures) == 4
    busy = Work(
        requests=100, answered_2xx=90, users=4, avatars_created=9, avatars_generated=2, uses_accepted=8, wallets=4
    )
    assert check_work(busy).ok


def exchange(started: float, ended: float, status: int | None) -> Exchange:
    return Exchange(started, ended, "GET", "GET /projects", status)


def test_5xx_is_explained_only_by_an_overlapping_fault_window_plus_grace_and_only_502_503_504() -> None:
    windows = [Window("kill", "projects-api", 10.0, 20.0), Window("kill", "gateway", 40.0, 45.0)]
    exchanges = [
        exchange(0.0, 1.0, 200),  # fine: not counted
        exchange(15.0, 15.1, 503),  # inside
        exchange(9.0, 10.5, 502),  # started before, answered inside
        exchange(24.0, 24.1, 503),  # within 5 s grace after the restart
        exchange(26.0, 26.1, 503),  # after the grace: unexplained
        exchange(15.0, 15.1, 500),  # inside, but 500 is never the outage's doing
        exchange(12.0, 12.1, None),  # no answer while only projects was down: the gateway should have answered
        exchange(41.0, 41.5, None),  # no answer while the gateway was down: fine
    ]
    verdict = classify(exchanges, windows, grace=5.0)
    assert (verdict.server_errors, verdict.explained) == (7, 4)
    assert [(e.started, e.status) for e in verdict.unexplained] == [(26.0, 503), (15.0, 500), (12.0, None)]
    assert not verdict.ok
