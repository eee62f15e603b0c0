"""Exactly-once operations: a key is claimed by a UNIQUE insert in the operation's own transaction.

The claim and the operation's effects commit together or not at all, so a failed attempt (402, 409, a
crash) leaves the key free for a retry, and a committed one is replayed, never re-run: the same status and the
same JSON value (not byte for byte: the answer is kept as jsonb, which orders an object's keys its own way).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.errors import Conflict
from lumiku_credits.repository import CreditsRepository


class IdempotencyConflict(Conflict):
    message = "Idempotency key already used with a different request"


@dataclass(frozen=True)
class Outcome:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False


def request_hash(operation: str, request: dict[str, Any]) -> str:
    canonical = json.dumps({"operation": operation, "request": request}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def once(
    session: AsyncSession,
    *,
    key: str,
    operation: str,
    request: dict[str, Any],
    status_code: int,
    action: Callable[[], Awaitable[BaseModel]],
) -> Outcome:
    repo, digest = CreditsRepository(session), request_hash(operation, request)
    if await repo.claim_key(key, operation, digest):
        body = (await action()).model_dump(mode="json")
        await repo.save_result(key, status_code, body)
        return Outcome(status_code, body)
    stored = await repo.get_key(key)
    if stored.request_hash != digest or stored.status_code is None or stored.response is None:
        raise IdempotencyConflict()
    return Outcome(stored.status_code, stored.response, replayed=True)
