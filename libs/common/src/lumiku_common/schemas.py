"""Wire conventions: camelCase JSON, ISO-8601 UTC times with milliseconds and `Z`, strict request bodies."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints
from pydantic.alias_generators import to_camel


def iso_utc(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


UtcDatetime = Annotated[datetime, PlainSerializer(iso_utc, return_type=str)]


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it as input instead of failing on insert.
    if "\x00" in value:
        raise ValueError("String must not contain NUL characters")
    return value


def text(min_length: int | None = None, max_length: int | None = None, strip: bool = True) -> object:
    """A string field type: trimmed, bounded, NUL-free."""
    return Annotated[
        str,
        StringConstraints(strip_whitespace=strip, min_length=min_length, max_length=max_length),
        AfterValidator(_no_nul),
    ]


class CamelModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        from_attributes=True,
    )


class RequestModel(CamelModel):
    """Request bodies reject unknown keys so a misspelt field is an error, not silently dropped.

    `null` for an optional field means "absent" (the spec's hotfix case): optional fields default to None.
    """

    model_config = ConfigDict(extra="forbid")


class Pagination(CamelModel):
    page: int
    limit: int
    total: int
    total_pages: int

    @classmethod
    def of(cls, page: int, limit: int, total: int) -> Pagination:
        return cls(page=page, limit=limit, total=total, total_pages=max(1, math.ceil(total / limit)))


T = TypeVar("T")


class PageParams(BaseModel):
    """`?page=&limit=`; the default limit returns a small account's whole list in one page."""

    page: int = Field(1, ge=1, le=1_000_000)
    limit: int = Field(100, ge=1, le=100)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit


class Page(CamelModel, Generic[T]):
    items: list[T]
    total: int
