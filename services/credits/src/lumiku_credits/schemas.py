from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StrictInt, model_validator

from lumiku_common.clients.credits import MAX_AMOUNT, IdempotencyKey, Reason, UserId
from lumiku_common.schemas import CamelModel, PageParams, Pagination, RequestModel, UtcDatetime, iso_utc

EntryType = Literal["purchase", "bonus", "usage", "refund", "adjustment"]
GrantType = Literal["purchase", "bonus", "adjustment"]

SignedAmount = Annotated[StrictInt, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]


class GrantRequest(RequestModel):
    user_id: UserId
    amount: SignedAmount
    type: GrantType
    description: Reason
    idempotency_key: IdempotencyKey

    @model_validator(mode="after")
    def _sign_fits_type(self) -> GrantRequest:
        # Only an adjustment may take credits away; nothing is ever a zero-credit entry.
        if self.amount == 0 or (self.amount < 0 and self.type != "adjustment"):
            raise ValueError("amount must be positive (negative only for type adjustment, never 0)")
        return self


class BalanceResponse(CamelModel):
    success: bool = True
    balance: int
    available: int
    held: int
    low_balance: bool


class EntryOut(CamelModel):
    id: str
    user_id: str
    amount: int
    balance: int = Field(validation_alias="balance_after")
    type: EntryType
    description: str
    reference_id: str | None
    reference_type: str | None
    created_at: UtcDatetime


class GrantResponse(CamelModel):
    success: bool = True
    transaction: EntryOut
    balance: int


class TransactionsResponse(CamelModel):
    success: bool = True
    transactions: list[EntryOut]
    pagination: Pagination


# Filters outside these bounds match nothing a ledger can hold, and at the edges of the calendar (year 1 at
# +14:00) are not even a time PostgreSQL or Python can convert to UTC: refused with 400, never a 500.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # A naive time has no meaning against timestamptz; read it as UTC like every time on the wire.
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError(f"Time must be between {iso_utc(EARLIEST)} and {iso_utc(LATEST)}")
    return utc


QueryTime = Annotated[datetime | None, AfterValidator(_as_utc)]


class HistoryParams(PageParams):
    type: EntryType | None = None
    from_: QueryTime = Field(None, alias="from")
    to: QueryTime = None
    format: Literal["json", "csv"] | None = None
