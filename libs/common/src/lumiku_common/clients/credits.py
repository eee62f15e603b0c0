"""Client of the credits service's holds: reserve before work, capture after it, release on failure.

Contract (credits service, service token); the models below are the only definition of these bodies:
  POST HOLDS                     ReserveRequest → 201 ReserveResponse
      402 {"error": "Insufficient credits", "required": int, "current": int}
      409 {"error": ...}  same idempotency key, different body
  POST capture_path(hold id)     CaptureRequest → 200 CaptureResponse
  POST release_path(hold id)     ReleaseRequest → 200 ReleaseResponse
      409 already captured/released; 410 expired; 404 unknown hold
How its failures reach our caller: 402 as is (the caller cannot pay); any other 4xx is a request we built and
the credits service refused, so 502 (logged); 5xx, no connection or no answer as lumiku_common.internal says.
Capture and release also travel as `credits.capture` / `credits.release` commands through the caller's
outbox (see `capture_command`), so a caller that crashes after committing its work still pays exactly once.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Annotated, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, Field, StrictInt, StringConstraints, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.errors import AppError, Conflict, Gone, InsufficientCredits, NotFound
from lumiku_common.idempotency import IdempotencyKey
from lumiku_common.internal import BadGateway, InternalClient, InternalResponse, unexpected
from lumiku_common.logs import get_logger
from lumiku_common.messaging.events import CaptureCredits, ReleaseCredits
from lumiku_common.messaging.outbox import add_event
from lumiku_common.schemas import CamelModel, CleanStr, NoControl, RequestModel, UtcDatetime

# --- the contract: one definition, used by the credits service and by this client ----------------------

MAX_AMOUNT = 1_000_000  # per operation; the ledger's CHECK enforces it too

# Strict: `true`, `15.0` and `"15"` are not amounts of money.
Amount = Annotated[StrictInt, Field(ge=1, le=MAX_AMOUNT)]
# As a token names users (printable): a grant to any other id would make a wallet nobody can use.
UserId = Annotated[CleanStr, StringConstraints(min_length=1, max_length=128), NoControl]
RefId = Annotated[CleanStr, StringConstraints(min_length=1, max_length=200)]
RefType = Annotated[CleanStr, StringConstraints(min_length=1, max_length=100)]
Description = Annotated[CleanStr, StringConstraints(max_length=500)]
Reason = Annotated[CleanStr, StringConstraints(min_length=1, max_length=500)]

HoldStatus = Literal["active", "captured", "released", "expired"]


class Hold(CamelModel):
    id: str
    user_id: str
    amount: int
    status: HoldStatus
    reference_id: str
    reference_type: str
    expires_at: UtcDatetime
    captured_amount: int | None = None


class ReserveRequest(RequestModel):
    user_id: UserId
    amount: Amount
    reference_id: RefId
    reference_type: RefType
    description: Description
    idempotency_key: IdempotencyKey
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=604_800)] | None = None


class CaptureRequest(RequestModel):
    idempotency_key: IdempotencyKey
    amount: Amount | None = None  # None: the whole hold


class ReleaseRequest(RequestModel):
    idempotency_key: IdempotencyKey
    reason: Reason


class ReserveResponse(CamelModel):
    hold: Hold
    available: int


class CaptureResponse(CamelModel):
    hold: Hold
    balance: int


class ReleaseResponse(CamelModel):
    hold: Hold


HOLDS = "/internal/credits/holds"


def capture_path(hold_id: str) -> str:
    return f"{HOLDS}/{hold_id}/capture"


def release_path(hold_id: str) -> str:
    return f"{HOLDS}/{hold_id}/release"


# --- the client ------------------------------------------------------------------------------------------

log = get_logger(__name__)


class CreditsRequestRejected(AppError):
    """The credits service refused a request we built (any 4xx but 402). Our caller sent nothing wrong, so it
    is no 4xx of theirs; it is a failure of an upstream call, hence 502, logged for us to fix. The subclasses
    keep the contract's meaning for callers that expect one (a release racing an expiry, say)."""

    status_code = 502
    message = "Bad gateway"

    def __init__(self, status: int, detail: str | None = None):
        super().__init__()
        self.status, self.detail = status, detail


class HoldNotFound(CreditsRequestRejected, NotFound):
    status_code = 502


class HoldConflict(CreditsRequestRejected, Conflict):
    status_code = 502


class HoldExpired(CreditsRequestRejected, Gone):
    status_code = 502


# Expected answers to a capture or release that raced something; anything else in 4xx is a bug of ours.
_RACES: dict[int, type[CreditsRequestRejected]] = {404: HoldNotFound, 409: HoldConflict, 410: HoldExpired}

R = TypeVar("R", bound=BaseModel)


class CreditsClient:
    def __init__(self, client: InternalClient):
        self.client = client

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _post(self, path: str, body: RequestModel, answer: type[R]) -> R:
        response = await self.client.request("POST", path, json=body.model_dump(mode="json", exclude_none=True))
        status = response.status_code
        if status in (200, 201):
            return _parsed(answer, response)
        if status == 402:
            payload = _parsed(InsufficientCreditsBody, response)
            raise InsufficientCredits(required=payload.required, current=payload.current)
        if not 400 <= status < 500 or status == 429:
            raise unexpected(response)
        detail = _error_of(response)
        if status in _RACES:
            log.warning("credits_request_refused", path=path, status=status, error=detail)
            raise _RACES[status](status, detail)
        log.error("credits_request_rejected", path=path, status=status, body=response.text[:500])
        raise CreditsRequestRejected(status, detail)

    async def reserve(self, request: ReserveRequest) -> Hold:
        return (await self._post(HOLDS, request, ReserveResponse)).hold

    async def capture(self, hold_id: str, idempotency_key: str, amount: int | None = None) -> Hold:
        request = CaptureRequest(idempotency_key=idempotency_key, amount=amount)
        return (await self._post(capture_path(quote(hold_id, safe="")), request, CaptureResponse)).hold

    async def release(self, hold_id: str, idempotency_key: str, reason: str) -> Hold:
        request = ReleaseRequest(idempotency_key=idempotency_key, reason=reason)
        return (await self._post(release_path(quote(hold_id, safe="")), request, ReleaseResponse)).hold


class InsufficientCreditsBody(CamelModel):
    required: int
    current: int


def _parsed(model: type[R], response: InternalResponse) -> R:
    """The answer's body as the contract says; anything else is the upstream failing (502)."""
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        log.error("credits_answer_unreadable", status=response.status_code, error=str(exc)[:500])
        raise BadGateway() from exc


def _error_of(response: InternalResponse) -> str | None:
    with suppress(ValueError):
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body["error"]
    return None


async def capture_command(session: AsyncSession, user_id: str, hold_id: str, amount: int | None = None) -> None:
    """Stages a capture in the caller's unit of work: it happens if and only if the caller's change commits."""
    await add_event(
        session,
        CaptureCredits(hold_id=hold_id, amount=amount, idempotency_key=f"capture:{hold_id}"),
        user_id=user_id,
        subject=hold_id,
    )


async def release_command(session: AsyncSession, user_id: str, hold_id: str, reason: str) -> None:
    await add_event(
        session,
        ReleaseCredits(hold_id=hold_id, reason=reason, idempotency_key=f"release:{hold_id}"),
        user_id=user_id,
        subject=hold_id,
    )
