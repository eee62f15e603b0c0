"""Client of the credits service's holds: reserve before work, capture after it, release on failure.

Contract (credits service, `/internal/credits/holds`, service token):
  POST /internal/credits/holds  {userId, amount, referenceId, referenceType, description, idempotencyKey,
                                 ttlSeconds?}
      201 {"hold": Hold, "available": int}
      402 {"error": "Insufficient credits", "required": int, "current": int}
      409 {"error": ...}  same idempotency key, different body
  POST /internal/credits/holds/{id}/capture  {idempotencyKey, amount?}   200 {"hold": Hold, "balance": int}
  POST /internal/credits/holds/{id}/release  {idempotencyKey, reason}    200 {"hold": Hold}
      409 already captured/released; 410 expired; 404 unknown hold
Capture and release also travel as `credits.capture` / `credits.release` commands through the caller's
outbox (see `capture_command`), so a caller that crashes after committing its work still pays exactly once.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.errors import AppError, Conflict, Gone, InsufficientCredits, NotFound, ServiceUnavailable
from lumiku_common.internal import InternalClient
from lumiku_common.logs import get_logger
from lumiku_common.messaging.events import CaptureCredits, ReleaseCredits
from lumiku_common.messaging.outbox import add_event
from lumiku_common.schemas import CamelModel, UtcDatetime

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


log = get_logger(__name__)
_ERRORS: dict[int, type[AppError]] = {404: NotFound, 409: Conflict, 410: Gone}


class CreditsRequestRejected(AppError):
    """The credits service refused our request as malformed: a bug or a misconfiguration on our side."""

    status_code = 500
    message = "Internal server error"


class CreditsClient:
    def __init__(self, client: InternalClient):
        self.client = client

    async def _post(self, path: str, body: dict) -> dict:
        response = await self.client.request("POST", path, json=body)
        payload = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code in (200, 201):
            result: dict = payload
            return result
        if response.status_code == 402:
            raise InsufficientCredits(required=payload["required"], current=payload["current"])
        if response.status_code in _ERRORS:
            raise _ERRORS[response.status_code](payload.get("error"))
        if response.status_code in (400, 401, 403, 422):
            log.error("credits_request_rejected", path=path, status=response.status_code, body=payload)
            raise CreditsRequestRejected()
        raise ServiceUnavailable()

    async def reserve(
        self,
        *,
        user_id: str,
        amount: int,
        reference_id: str,
        reference_type: str,
        description: str,
        idempotency_key: str,
        ttl_seconds: int | None = None,
    ) -> Hold:
        body = {
            "userId": user_id,
            "amount": amount,
            "referenceId": reference_id,
            "referenceType": reference_type,
            "description": description,
            "idempotencyKey": idempotency_key,
        }
        if ttl_seconds is not None:
            body["ttlSeconds"] = ttl_seconds
        return Hold.model_validate((await self._post("/internal/credits/holds", body))["hold"])

    async def capture(self, hold_id: str, idempotency_key: str, amount: int | None = None) -> Hold:
        body: dict = {"idempotencyKey": idempotency_key}
        if amount is not None:
            body["amount"] = amount
        return Hold.model_validate((await self._post(f"/internal/credits/holds/{hold_id}/capture", body))["hold"])

    async def release(self, hold_id: str, idempotency_key: str, reason: str) -> Hold:
        body = {"idempotencyKey": idempotency_key, "reason": reason}
        return Hold.model_validate((await self._post(f"/internal/credits/holds/{hold_id}/release", body))["hold"])


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
