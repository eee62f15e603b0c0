"""Client of the credits service's holds: reserve before work, capture after it, release on failure.

Contract (credits service, service token); the models below are the only definition of these bodies:
  POST HOLDS                     ReserveRequest → 201 ReserveResponse
      402 {"error": "Insufficient credits", "required": int, "current": int}
      409 {"error": ...}  same idempotency key, different body
  POST capture_path(hold id)     CaptureRequest → 200 CaptureResponse
  POST release_path(hold id)     ReleaseRequest → 200 ReleaseResponse
      409 already captured/released; 410 expired; 404 unknown hold
Capture and release also travel as `credits.capture` / `credits.release` commands through the caller's
outbox (see `capture_command`), so a caller that crashes after committing its work still pays exactly once.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, Field, StrictInt, StringConstraints
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.errors import AppError, Conflict, Gone, InsufficientCredits, NotFound, ServiceUnavailable
from lumiku_common.idempotency import IdempotencyKey
from lumiku_common.internal import InternalClient
from lumiku_common.logs import get_logger
from lumiku_common.messaging.events import CaptureCredits, ReleaseCredits
from lumiku_common.messaging.outbox import add_event
from lumiku_common.schemas import CamelModel, CleanStr, RequestModel, UtcDatetime

# --- the contract: one definition, used by the credits service and by this client ----------------------

MAX_AMOUNT = 1_000_000  # per operation; the ledger's CHECK enforces it too

# Strict: `true`, `15.0` and `"15"` are not amounts of money.
Amount = Annotated[StrictInt, Field(ge=1, le=MAX_AMOUNT)]
UserId = Annotated[CleanStr, StringConstraints(min_length=1, max_length=128)]
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
_ERRORS: dict[int, type[AppError]] = {404: NotFound, 409: Conflict, 410: Gone}


class CreditsRequestRejected(AppError):
    """The credits service refused our request as malformed: a bug or a misconfiguration on our side."""

    status_code = 500
    message = "Internal server error"


R = TypeVar("R", bound=BaseModel)


class CreditsClient:
    def __init__(self, client: InternalClient):
        self.client = client

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _post(self, path: str, body: RequestModel, answer: type[R]) -> R:
        response = await self.client.request("POST", path, json=body.model_dump(mode="json", exclude_none=True))
        payload = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code in (200, 201):
            return answer.model_validate(payload)
        if response.status_code == 402:
            raise InsufficientCredits(required=payload["required"], current=payload["current"])
        if response.status_code in _ERRORS:
            raise _ERRORS[response.status_code](payload.get("error"))
        if response.status_code in (400, 401, 403, 422):
            log.error("credits_request_rejected", path=path, status=response.status_code, body=payload)
            raise CreditsRequestRejected()
        raise ServiceUnavailable()

    async def reserve(self, request: ReserveRequest) -> Hold:
        return (await self._post(HOLDS, request, ReserveResponse)).hold

    async def capture(self, hold_id: str, idempotency_key: str, amount: int | None = None) -> Hold:
        request = CaptureRequest(idempotency_key=idempotency_key, amount=amount)
        return (await self._post(capture_path(quote(hold_id, safe="")), request, CaptureResponse)).hold

    async def release(self, hold_id: str, idempotency_key: str, reason: str) -> Hold:
        request = ReleaseRequest(idempotency_key=idempotency_key, reason=reason)
        return (await self._post(release_path(quote(hold_id, safe="")), request, ReleaseResponse)).hold


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
