from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt, model_validator

from lumiku_common.clients.credits import MAX_AMOUNT, IdempotencyKey, Reason, UserId
from lumiku_common.schemas import CamelModel, PageParams, Pagination, QueryTime, RequestModel, UtcDatetime

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


class HistoryParams(PageParams):
    type: EntryType | None = None
    from_: QueryTime = Field(None, alias="from")
    to: QueryTime = None
    format: Literal["json", "csv"] | None = None
