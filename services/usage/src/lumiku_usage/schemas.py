from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from lumiku_common.messaging.events import AppName, Metadata, Reference, Slug
from lumiku_common.schemas import CamelModel, CleanStr, NoControl, QueryTime, RequestModel, UtcDatetime, bounded_utc

AvatarId = Annotated[CleanStr, StringConstraints(min_length=1, max_length=64), NoControl]
MAX_PAGE = 500
DEFAULT_PAGE = 100  # the spec's "last 100"


class TrackUsageRequest(RequestModel):
    """§11.1's body; the same fields and limits as an `avatar.used` event."""

    avatar_id: AvatarId
    app_id: Slug
    app_name: AppName
    action: Slug
    reference_id: Reference | None = None
    reference_type: Reference | None = None
    metadata: Metadata = None


class UsageOut(CamelModel):
    id: str
    avatar_id: str
    app_id: str
    app_name: str
    action: str
    reference_id: str | None
    reference_type: str | None
    metadata: dict[str, Any] | None = Field(validation_alias="meta")
    created_at: UtcDatetime


class TrackUsageResponse(CamelModel):
    success: bool = True
    usage: UsageOut


# --- history ------------------------------------------------------------------------------------------------


class Cursor(BaseModel):
    """Where a page ended: the last row's time and id (opaque to clients, base64url)."""

    created_at: datetime
    id: str

    def encode(self) -> str:
        raw = f"{self.created_at.astimezone(UTC).isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            at, _, row_id = raw.partition("|")
            moment = datetime.fromisoformat(at)
            # The id goes into the keyset comparison as text: PostgreSQL refuses NUL there (a 500).
            if moment.tzinfo is None or not row_id or not row_id.isprintable():
                raise ValueError
            # A time at the calendar's edge (year 1 at +14:00) has no UTC: the database would fail on it.
            return cls(created_at=bounded_utc(moment), id=row_id)
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError("Invalid cursor") from exc


class HistoryParams(BaseModel):
    cursor: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE)
    app_id: Slug | None = Field(None, alias="appId")
    from_: QueryTime = Field(None, alias="from")
    to: QueryTime = None

    @field_validator("cursor")
    @classmethod
    def _decodable(cls, value: str | None) -> str | None:
        if value is not None:
            Cursor.decode(value)
        return value

    @property
    def position(self) -> Cursor | None:
        return Cursor.decode(self.cursor) if self.cursor else None


class HistoryItem(CamelModel):
    id: str
    app_id: str
    app_name: str
    action: str
    reference_id: str | None
    reference_type: str | None
    metadata: dict[str, Any] | None = Field(validation_alias="meta")
    created_at: UtcDatetime


class Summary(CamelModel):
    total_usage: int
    app_breakdown: dict[str, int]
    last_used: UtcDatetime | None


class HistoryResponse(CamelModel):
    success: bool = True
    history: list[HistoryItem]
    summary: Summary
    next_cursor: str | None = Field(description="Pass as `?cursor=` for the next (older) page; null on the last")


# --- analytics ----------------------------------------------------------------------------------------------

Granularity = Literal["hour", "day", "month"]


class UsageQuery(BaseModel):
    from_: QueryTime = Field(None, alias="from", description="Default: 30 days before `to`")
    to: QueryTime = Field(None, description="Exclusive; default: now")
    granularity: Granularity = "day"
    app_id: Slug | None = Field(None, alias="appId")
    avatar_id: AvatarId | None = Field(None, alias="avatarId")
    format: Literal["json", "csv"] | None = None
    top: int = Field(10, ge=1, le=100, description="How many top avatars")

    @model_validator(mode="after")
    def _ordered(self) -> UsageQuery:
        if self.from_ is not None and self.to is not None and self.from_ >= self.to:
            raise ValueError("from must be before to")
        return self


class Bucket(CamelModel):
    start: UtcDatetime
    uses: int


class AvatarUses(CamelModel):
    avatar_id: str
    uses: int


class UsageAnalytics(CamelModel):
    success: bool = True
    granularity: Granularity
    # The whole hours the answer covers: `from` rounded down, `to` rounded up (the rollups count by hour).
    from_: UtcDatetime = Field(alias="from")
    to: UtcDatetime
    total: int
    series: list[Bucket]
    by_app: dict[str, int]
    top_avatars: list[AvatarUses]
