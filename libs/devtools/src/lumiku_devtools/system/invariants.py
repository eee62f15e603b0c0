"""The system's invariants, as pure functions over a `Snapshot` (read by snapshot.py once the system settled):
each returns a `Check` with how many things it looked at and what broke, so the report can say
"ledgers checked: 40, mismatches: 0"."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

SIGNUP_BONUS = 100  # credits' CREDITS_SIGNUP_BONUS, paid once when a wallet opens
UPLOAD_PRICE = 10  # avatars' UPLOAD_COST
SAVED_PREVIEW_PRICE = 15  # avatars' SAVE_PREVIEW_COST: an AI avatar that no generation job made
FIRST_IMAGE_PRICE, VARIATION_PRICE = 15, 10  # generation's per-image prices


def generation_price(avatars: int) -> int:
    """What a generation job that made `avatars` avatars costs: 15 for the first, 10 for each variation."""
    return FIRST_IMAGE_PRICE + VARIATION_PRICE * (avatars - 1) if avatars > 0 else 0


@dataclass(frozen=True)
class AvatarRow:
    user_id: str
    source_type: str  # "upload" | "ai_generated"
    keys: tuple[str, ...]  # the objects it references
    usage_count: int


@dataclass(frozen=True)
class DlqEntry:
    queue: str
    event_id: str  # the message id, else the envelope's id
    avatar_id: str  # avatar.used's avatarId, when the body parsed
    reason: str


@dataclass
class Snapshot:
    wallets: dict[str, int]  # user -> balance
    ledger_sums: dict[str, int]  # user -> SUM(amount)
    grants: dict[str, int]  # user -> credits the harness granted (acknowledged)
    announced: dict[str, tuple[str, str]]  # avatar.created events seen: avatar -> (user, source type)
    deleted: set[str]  # avatar.deleted events seen
    avatars: dict[str, AvatarRow]  # rows in avatars' database now
    generated_by: dict[str, str]  # avatar (= generation image id) -> generation job
    holds_overdue: list[str]  # active holds past their expiry (+ the sweeper's grace)
    holds_active: int
    usage_rows: dict[str, Counter[str]]  # avatar -> reference id -> rows in usage_events
    accepted_uses: dict[str, set[str]]  # avatar -> reference ids the system acknowledged (HTTP 2xx or confirm)
    uncertain_uses: dict[str, set[str]]  # avatar -> reference ids sent without a definite answer
    objects: set[str]  # keys in the object store (temporaries excluded)
    outbox_pending: dict[str, int]  # service -> unpublished rows
    queue_depths: dict[str, int]  # work queues (not DLQs) -> ready messages
    dlq: list[DlqEntry]
    injected_ids: set[str]  # ids of the broken events published on purpose
    now: datetime = field(default_factory=datetime.now)


@dataclass
class Check:
    name: str
    checked: int = 0
    failures: list[str] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


def expected_spend(snapshot: Snapshot) -> dict[str, int]:
    """What each user paid for the avatars that were ever created (deleting one refunds nothing): uploads at
    their price, and each generation job at the price of the avatars it made."""
    spend: Counter[str] = Counter()
    per_job: dict[str, list[str]] = {}
    for avatar_id, (user, source) in snapshot.announced.items():
        job = snapshot.generated_by.get(avatar_id)
        if job is not None:
            per_job.setdefault(job, []).append(user)
        else:
            spend[user] += UPLOAD_PRICE if source == "upload" else SAVED_PREVIEW_PRICE
    for users in per_job.values():
        spend[users[0]] += generation_price(len(users))
    return dict(spend)


def check_ledgers(snapshot: Snapshot) -> Check:
    check = Check("ledgers")
    spend = expected_spend(snapshot)
    for user, balance in sorted(snapshot.wallets.items()):
        check.checked += 1
        total = snapshot.ledger_sums.get(user, 0)
        expected = SIGNUP_BONUS + snapshot.grants.get(user, 0) - spend.get(user, 0)
        if total != balance:
            check.failures.append(f"{user}: ledger sums to {total}, wallet says {balance}")
        elif balance != expected:
            check.failures.append(
                f"{user}: balance {balance} != 100 + grants {snapshot.grants.get(user, 0)} - spent {spend.get(user, 0)}"
            )
    for user in sorted(set(spend) - set(snapshot.wallets)):
        check.failures.append(f"{user}: avatars worth {spend[user]} credits but no wallet")
    check.notes["spent"] = sum(spend.values())
    return check


def check_avatars_announced(snapshot: Snapshot) -> Check:
    """Every avatar row was announced (avatar.created reached the broker) and every announced, undeleted
    avatar has its row: the outbox lost nothing and published nothing that did not commit."""
    check = Check("avatars announced")
    alive = set(snapshot.announced) - snapshot.deleted
    check.checked = len(alive | set(snapshot.avatars))
    check.failures += [f"{a}: row without avatar.created" for a in sorted(set(snapshot.avatars) - alive)]
    check.failures += [f"{a}: announced, not deleted, no row" for a in sorted(alive - set(snapshot.avatars))]
    check.notes["deleted"] = len(snapshot.deleted)
    return check


def check_holds(snapshot: Snapshot) -> Check:
    check = Check("holds", checked=snapshot.holds_active + len(snapshot.holds_overdue))
    check.failures += [f"hold {h} active past its expiry" for h in snapshot.holds_overdue]
    check.notes["active, not expired"] = snapshot.holds_active
    return check


def check_usage(snapshot: Snapshot) -> Check:
    """For each avatar that exists: every acknowledged use recorded exactly once, an unacknowledged one at most
    once, nothing else; and its counter equals its history."""
    check = Check("usage")
    for avatar_id, row in sorted(snapshot.avatars.items()):
        check.checked += 1
        rows = snapshot.usage_rows.get(avatar_id, Counter())
        accepted = snapshot.accepted_uses.get(avatar_id, set())
        uncertain = snapshot.uncertain_uses.get(avatar_id, set())
        missing = sorted(r for r in accepted if rows[r] == 0)
        doubled = sorted(r for r, n in rows.items() if n > 1)
        unknown = sorted(r for r in rows if r not in accepted and r not in uncertain)
        for what, refs in (("missing", missing), ("recorded twice", doubled), ("never sent", unknown)):
            if refs:
                check.failures.append(f"{avatar_id}: uses {what}: {refs[:5]}")
        history = sum(rows.values())
        if row.usage_count != history:
            check.failures.append(f"{avatar_id}: usageCount {row.usage_count} != history {history}")
    check.notes["uses accepted"] = sum(len(v) for a, v in snapshot.accepted_uses.items() if a in snapshot.avatars)
    check.notes["uses recorded"] = sum(sum(c.values()) for c in snapshot.usage_rows.values())
    return check


def check_objects(snapshot: Snapshot) -> Check:
    expected = {key for row in snapshot.avatars.values() for key in row.keys}
    check = Check("objects", checked=len(expected | snapshot.objects))
    check.failures += [f"object without a row: {k}" for k in sorted(snapshot.objects - expected)]
    check.failures += [f"row without its object: {k}" for k in sorted(expected - snapshot.objects)]
    return check


def check_drained(snapshot: Snapshot) -> Check:
    check = Check("outboxes and queues drained", checked=len(snapshot.outbox_pending) + len(snapshot.queue_depths))
    check.failures += [f"outbox of {s}: {n} unpublished" for s, n in sorted(snapshot.outbox_pending.items()) if n]
    check.failures += [f"queue {q}: {n} waiting" for q, n in sorted(snapshot.queue_depths.items()) if n]
    return check


def check_dlq(snapshot: Snapshot) -> Check:
    """Each dead letter is a broken event published on purpose, or a use of an avatar deleted meanwhile (its
    deletion raced the event: dead-lettering it is the documented outcome)."""
    check = Check("dead letters", checked=len(snapshot.dlq))
    for entry in snapshot.dlq:
        if entry.event_id in snapshot.injected_ids:
            check.notes["injected"] = check.notes.get("injected", 0) + 1
        elif entry.avatar_id and entry.avatar_id in snapshot.deleted:
            check.notes["use of a deleted avatar"] = check.notes.get("use of a deleted avatar", 0) + 1
        else:
            check.failures.append(f"{entry.queue}: {entry.event_id} ({entry.reason[:120]})")
    missing = snapshot.injected_ids - {e.event_id for e in snapshot.dlq}
    check.failures += [f"injected event {i} not dead-lettered" for i in sorted(missing)]
    return check


def check_all(snapshot: Snapshot) -> list[Check]:
    return [
        check_ledgers(snapshot),
        check_avatars_announced(snapshot),
        check_holds(snapshot),
        check_usage(snapshot),
        check_objects(snapshot),
        check_drained(snapshot),
        check_dlq(snapshot),
    ]


@dataclass(frozen=True)
class Work:
    """How much the load got done: a run where nothing worked would pass every other check vacuously."""

    requests: int
    answered_2xx: int
    users: int
    avatars_created: int
    avatars_generated: int
    uses_accepted: int
    wallets: int


def check_work(work: Work, min_success: float = 0.3) -> Check:
    """On a busy 2-core machine a restart takes 10-40 s, so faults cover most of the run: the bar is low on
    purpose; the counts below are what a broken run cannot reach."""
    check = Check("the load got work done", checked=work.requests, notes={"2xx": work.answered_2xx})
    if work.answered_2xx < min_success * work.requests:
        check.failures.append(f"only {work.answered_2xx} of {work.requests} requests succeeded")
    for what, count, least in (
        ("wallets", work.wallets, work.users),
        ("avatars created", work.avatars_created, work.users),
        ("avatars generated", work.avatars_generated, 1),
        ("uses accepted", work.uses_accepted, work.users),
    ):
        if count < least:
            check.failures.append(f"{what}: {count} < {least}")
    return check
