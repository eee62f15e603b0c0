from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, TypeAlias

from pydantic import AfterValidator, Field, StrictInt, model_validator

from lumiku_common.clients.credits import Hold
from lumiku_common.schemas import CamelModel, PageParams, Pagination, RequestModel, UtcDatetime, text
from lumiku_credits.models import MAX_AMOUNT

EntryType = Literal["purchase", "bonus", "usage", "refund", "adjustment"]
GrantType = Literal["purchase", "bonus", "adjustment"]

# Strict: `true`, `15.0` and `"15"` are not amounts of money.
Amount = Annotated[StrictInt, Field(ge=1, le=MAX_AMOUNT)]
SignedAmount = Annotated[StrictInt, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]
UserId = text(1, 128)
Key = text(1, 200)
RefId = text(1, 200)
RefType = text(1, 100)
Description = text(0, 500)
Reason = text(1, 500)


class ReserveRequest(RequestModel):
    user_id: UserId  # type: ignore[valid-type]
    amount: Amount
    reference_id: RefId  # type: ignore[valid-type]
    reference_type: RefType  # type: ignore[valid-type]
    description: Description  # type: ignore[valid-type]
    idempotency_key: Key  # type: ignore[valid-type]
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=604_800)] | None = None


class CaptureRequest(RequestModel):
    idempotency_key: Key  # type: ignore[valid-type]
    amount: Amount | None = None  # None: the whole hold


class ReleaseRequest(RequestModel):
    idempotency_key: Key  # type: ignore[valid-type]
    reason: Reason  # type: ignore[valid-type]


class GrantRequest(RequestModel):
    user_id: UserId  # type: ignore[valid-type]
    amount: SignedAmount
    type: GrantType
    description: text(1, 500)  # type: ignore[valid-type]
    idempotency_key: Key  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _sign_fits_type(self) -> GrantRequest:
        # Only an adjustment may take credits away; nothing is ever a zero-credit entry.
        if self.amount == 0 or (self.amount < 0 and self.type != "adjustment"):
            raise ValueError("amount must be positive (negative only for type adjustment, never 0)")
        return self


# One definition of a hold on the wire: the one its callers parse.
HoldOut: TypeAlias = Hold


class ReserveResponse(CamelModel):
    hold: HoldOut
    available: int


class CaptureResponse(CamelModel):
    hold: HoldOut
    balance: int


class ReleaseResponse(CamelModel):
    hold: HoldOut


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


def _as_utc(value: datetime | None) -> datetime | None:
    # A naive time has no meaning against timestamptz; read it as UTC like every time on the wire.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


QueryTime = Annotated[datetime | None, AfterValidator(_as_utc)]


class HistoryParams(PageParams):
    type: EntryType | None = None
    from_: QueryTime = Field(None, alias="from")
    to: QueryTime = None
    format: Literal["json", "csv"] | None = None
