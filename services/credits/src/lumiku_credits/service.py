"""Credits use cases. No commits here: the request's (or message's) unit of work commits the change, its
idempotency key and its events together.

Every operation that moves money locks the user's wallet row first (`SELECT ... FOR UPDATE`), so all money
decisions of one user are serialised by the database; the ledger trigger and CHECKs are the backstop.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.clients.credits import (
    CaptureRequest,
    CaptureResponse,
    ReleaseRequest,
    ReleaseResponse,
    ReserveRequest,
    ReserveResponse,
)
from lumiku_common.clients.credits import Hold as HoldOut
from lumiku_common.errors import AppError, BadRequest, Conflict, Gone, InsufficientCredits, NotFound
from lumiku_common.idempotency import Idempotency, Outcome
from lumiku_common.logs import get_logger
from lumiku_common.messaging.events import (
    CreditsBalanceLow,
    CreditsCaptured,
    CreditsGranted,
    CreditsReleased,
    CreditsReserved,
)
from lumiku_common.messaging.outbox import add_event
from lumiku_credits.models import Hold, LedgerEntry, idempotency_keys
from lumiku_credits.repository import CreditsRepository
from lumiku_credits.schemas import BalanceResponse, EntryOut, GrantRequest, GrantResponse, HistoryParams
from lumiku_credits.settings import CreditsSettings

log = get_logger(__name__)
once = Idempotency(idempotency_keys).once


class HoldNotFound(NotFound):
    message = "Hold not found"


class HoldSettled(AppError):
    """The hold is no longer active: settling it again must change nothing."""


class HoldCaptured(HoldSettled, Conflict):
    message = "Hold already captured"


class HoldReleased(HoldSettled, Conflict):
    message = "Hold already released"


class HoldExpired(HoldSettled, Gone):
    message = "Hold expired"


class CaptureExceedsHold(Conflict):
    message = "Capture amount exceeds the held amount"


class LateCaptureUnaffordable(Conflict):
    message = "Hold expired before its capture arrived and the credits have been promised elsewhere since"


def hold_out(hold: Hold, now: datetime | None = None) -> HoldOut:
    # An active hold past its expiry is expired from that instant, whether or not the sweep has run.
    expired = hold.status == "active" and hold.expires_at <= (now or datetime.now(UTC))
    return HoldOut(
        id=hold.id,
        user_id=hold.user_id,
        amount=hold.amount,
        status="expired" if expired else hold.status,  # type: ignore[arg-type]
        reference_id=hold.reference_id,
        reference_type=hold.reference_type,
        expires_at=hold.expires_at,
        captured_amount=hold.captured_amount,
    )


# --- wallets --------------------------------------------------------------------------------------------


async def ensure_wallet(session: AsyncSession, settings: CreditsSettings, user_id: str) -> None:
    """Opens the wallet on first contact, with its signup bonus, exactly once however many requests race."""
    if not await CreditsRepository(session).wallet_exists(user_id):
        await _open_wallet(session, settings, user_id)


async def _open_wallet(session: AsyncSession, settings: CreditsSettings, user_id: str) -> None:
    repo = CreditsRepository(session)
    if not await repo.open_wallet(user_id):
        return  # another transaction opened it (and paid the bonus) first
    if settings.credits_signup_bonus > 0:
        entry = await repo.append(
            user_id=user_id,
            amount=settings.credits_signup_bonus,
            type="bonus",
            description="Signup bonus",
            reference_id=user_id,
            reference_type="signup",
            idempotency_key=f"signup:{user_id}",
        )
        await _granted(session, entry)


async def get_balance(session: AsyncSession, settings: CreditsSettings, user_id: str) -> BalanceResponse:
    await ensure_wallet(session, settings, user_id)
    balance, held = await CreditsRepository(session).balance_and_held(user_id)
    available = balance - held
    return BalanceResponse(
        balance=balance,
        available=available,
        held=held,
        low_balance=available < settings.credits_low_balance_threshold,
    )


async def _lock_available(session: AsyncSession, settings: CreditsSettings, user_id: str) -> tuple[datetime, int]:
    """Locks the wallet (opening it on first contact) and returns the clock and the credits not yet promised."""
    repo = CreditsRepository(session)
    balance = await repo.lock_wallet(user_id)
    if balance is None:
        await _open_wallet(session, settings, user_id)
        balance = await repo.lock_wallet(user_id)
        if balance is None:  # wallets are never deleted: only a broken database gets here
            raise RuntimeError(f"wallet of {user_id} vanished")
    now, held = await repo.held_after_lock(user_id)
    return now, balance - held


async def _warn_if_low(session: AsyncSession, settings: CreditsSettings, user_id: str, before: int, after: int) -> None:
    threshold = settings.credits_low_balance_threshold
    if after < threshold <= before:  # on crossing only: one warning, not one per operation below it
        await add_event(session, CreditsBalanceLow(available=after, threshold=threshold), user_id=user_id)


async def _granted(session: AsyncSession, entry: LedgerEntry) -> None:
    event = CreditsGranted(entry_id=entry.id, amount=entry.amount, entry_type=entry.type, balance=entry.balance_after)
    await add_event(session, event, user_id=entry.user_id, subject=entry.id)


# --- holds ----------------------------------------------------------------------------------------------


async def reserve(session: AsyncSession, settings: CreditsSettings, body: ReserveRequest) -> Outcome:
    return await once(
        session,
        key=body.idempotency_key,
        operation="reserve",
        request=body.model_dump(mode="json"),
        status_code=201,
        action=lambda: _reserve(session, settings, body),
    )


async def _reserve(session: AsyncSession, settings: CreditsSettings, body: ReserveRequest) -> ReserveResponse:
    ttl = body.ttl_seconds or settings.credits_hold_ttl_seconds
    if ttl > settings.credits_max_hold_ttl_seconds:
        raise BadRequest(f"ttlSeconds must be at most {settings.credits_max_hold_ttl_seconds}")
    now, available = await _lock_available(session, settings, body.user_id)
    if body.amount > available:
        raise InsufficientCredits(required=body.amount, current=available)
    hold = await CreditsRepository(session).add_hold(
        user_id=body.user_id,
        amount=body.amount,
        reference_id=body.reference_id,
        reference_type=body.reference_type,
        description=body.description,
        expires_at=now + timedelta(seconds=ttl),
    )
    reserved = CreditsReserved(
        hold_id=hold.id,
        amount=hold.amount,
        reference_id=hold.reference_id,
        reference_type=hold.reference_type,
        expires_at=hold.expires_at,
    )
    await add_event(session, reserved, user_id=hold.user_id, subject=hold.id)
    await _warn_if_low(session, settings, hold.user_id, available, available - hold.amount)
    return ReserveResponse(hold=hold_out(hold, now), available=available - hold.amount)


async def _settleable_hold(
    repo: CreditsRepository, hold_id: str, owner: str | None, work_done_at: datetime | None = None
) -> tuple[Hold, datetime]:
    """Locks wallet then hold (always in that order, so no two settlements deadlock) and checks it is active.

    `work_done_at` (captures sent as commands): the paid-for work committed then. A hold that expired only
    because the command arrived late is still captured, if the credits it held have not been promised since.
    """
    user_id = await repo.hold_owner(hold_id)
    if user_id is None or (owner is not None and owner != user_id):
        raise HoldNotFound()
    balance = await repo.lock_wallet(user_id)
    hold, now = await repo.lock_hold(hold_id)
    if hold.status == "captured":
        raise HoldCaptured()
    if hold.status == "released":
        raise HoldReleased()
    if hold.status == "expired" or hold.expires_at <= now:
        if work_done_at is None or work_done_at >= hold.expires_at:
            raise HoldExpired()
        _, held = await repo.held_after_lock(user_id)  # an expired hold no longer counts in `held`
        if (balance or 0) - held < hold.amount:
            raise LateCaptureUnaffordable()
        log.warning("late_capture_honoured", holdId=hold.id, expiredAt=str(hold.expires_at), doneAt=str(work_done_at))
    return hold, now


async def capture(
    session: AsyncSession,
    hold_id: str,
    body: CaptureRequest,
    owner: str | None = None,
    work_done_at: datetime | None = None,
) -> Outcome:
    return await once(
        session,
        key=body.idempotency_key,
        operation="capture",
        request={"holdId": hold_id, **body.model_dump(mode="json")},
        status_code=200,
        action=lambda: _capture(session, hold_id, body, owner, work_done_at),
    )


async def _capture(
    session: AsyncSession, hold_id: str, body: CaptureRequest, owner: str | None, work_done_at: datetime | None
) -> CaptureResponse:
    repo = CreditsRepository(session)
    hold, now = await _settleable_hold(repo, hold_id, owner, work_done_at)
    amount = hold.amount if body.amount is None else body.amount
    if amount > hold.amount:
        raise CaptureExceedsHold()
    entry = await repo.append(
        user_id=hold.user_id,
        amount=-amount,
        type="usage",
        description=hold.description,
        reference_id=hold.reference_id,
        reference_type=hold.reference_type,
        hold_id=hold.id,
        idempotency_key=f"capture:{body.idempotency_key}",
    )
    hold.status, hold.captured_amount, hold.settled_at = "captured", amount, now
    await session.flush()
    captured = CreditsCaptured(
        hold_id=hold.id,
        amount=amount,
        released=hold.amount - amount,
        reference_id=hold.reference_id,
        reference_type=hold.reference_type,
        balance=entry.balance_after,
    )
    await add_event(session, captured, user_id=hold.user_id, subject=hold.id)
    return CaptureResponse(hold=hold_out(hold, now), balance=entry.balance_after)


async def release(session: AsyncSession, hold_id: str, body: ReleaseRequest, owner: str | None = None) -> Outcome:
    return await once(
        session,
        key=body.idempotency_key,
        operation="release",
        request={"holdId": hold_id, **body.model_dump(mode="json")},
        status_code=200,
        action=lambda: _release(session, hold_id, body, owner),
    )


async def _release(session: AsyncSession, hold_id: str, body: ReleaseRequest, owner: str | None) -> ReleaseResponse:
    hold, now = await _settleable_hold(CreditsRepository(session), hold_id, owner)
    hold.status, hold.reason, hold.settled_at = "released", body.reason, now
    await session.flush()
    released = CreditsReleased(
        hold_id=hold.id,
        amount=hold.amount,
        reference_id=hold.reference_id,
        reference_type=hold.reference_type,
        reason=body.reason,
    )
    await add_event(session, released, user_id=hold.user_id, subject=hold.id)
    return ReleaseResponse(hold=hold_out(hold, now))


async def expire_due(session: AsyncSession, limit: int = 500) -> int:
    """Marks holds past their expiry as expired. Bookkeeping only: they stopped counting when they expired."""
    rows = await CreditsRepository(session).expire_due(limit)
    for row in rows:
        event = CreditsReleased(
            hold_id=row.id,
            amount=row.amount,
            reference_id=row.reference_id,
            reference_type=row.reference_type,
            reason="expired",
        )
        await add_event(session, event, user_id=row.user_id, subject=row.id)
    return len(rows)


# --- grants and history ---------------------------------------------------------------------------------


async def grant(session: AsyncSession, settings: CreditsSettings, body: GrantRequest, granted_by: str) -> Outcome:
    return await once(
        session,
        key=body.idempotency_key,
        operation="grant",
        request=body.model_dump(mode="json"),
        status_code=201,
        action=lambda: _grant(session, settings, body, granted_by),
    )


async def _grant(
    session: AsyncSession, settings: CreditsSettings, body: GrantRequest, granted_by: str
) -> GrantResponse:
    _, available = await _lock_available(session, settings, body.user_id)
    if body.amount < 0 and -body.amount > available:
        # Credits already promised to running work are not the operator's to take back.
        raise InsufficientCredits(required=-body.amount, current=available)
    entry = await CreditsRepository(session).append(
        user_id=body.user_id,
        amount=body.amount,
        type=body.type,
        description=body.description,
        reference_id=granted_by,
        reference_type="grant",
        idempotency_key=f"grant:{body.idempotency_key}",
    )
    await _granted(session, entry)
    await _warn_if_low(session, settings, body.user_id, available, available + body.amount)
    return GrantResponse(transaction=EntryOut.model_validate(entry), balance=entry.balance_after)


async def history(
    session: AsyncSession, settings: CreditsSettings, user_id: str, params: HistoryParams
) -> tuple[list[LedgerEntry], int]:
    await ensure_wallet(session, settings, user_id)
    repo = CreditsRepository(session)
    query = repo.entries_query(user_id, params.type, params.from_, params.to)
    return await repo.entries(query, params.offset, params.limit), await repo.count(query)
