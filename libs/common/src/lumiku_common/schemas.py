"""Wire conventions: camelCase JSON, ISO-8601 UTC times with milliseconds and `Z`, strict request bodies."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints, field_validator
from pydantic.alias_generators import to_camel
from starlette.responses import Response


def iso_utc(value: datetime) -> str:
    """`2026-01-31T12:00:00.123Z`. Formatted by hand: a list response calls this twice per item, and
    `astimezone(...).isoformat(...).replace(...)` cost twice as much."""
    if value.tzinfo is not UTC:  # asyncpg hands timestamptz over in UTC already
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    # `%` formatting: half the cost of the same with an f-string's format specs.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond // 1000,
    )


UtcDatetime = Annotated[datetime, PlainSerializer(iso_utc, return_type=str)]


# A trimmed string. Bound it where it is used: `Annotated[CleanStr, StringConstraints(max_length=100)]`
# (constraints merge, so the length is counted after trimming). NUL is refused by every request model below.
CleanStr = Annotated[str, StringConstraints(strip_whitespace=True)]


def _no_control_characters(value: str) -> str:
    if any(c < " " or c == "\x7f" for c in value):
        raise ValueError("String must not contain control characters")
    return value


# For an id that goes into another service's URL path: that service refuses control characters in a path (400),
# which its client cannot tell from a failure. Refused here, an id no record can have is a 400 (or a poison event).
# After the string's own constraints (`Annotated[str, StringConstraints(...), NoControl]`), so they keep their
# own error codes and stripping.
NoControl = AfterValidator(_no_control_characters)


def contains_nul(value: Any) -> bool:
    """PostgreSQL text and jsonb cannot hold NUL: inputs that carry one anywhere are refused, not inserted.
    Walked without recursion: a client's JSON may nest deeper than Python's recursion limit allows."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return False


class CamelModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        from_attributes=True,
    )


def json_response(model: BaseModel, status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """`model` as JSON bytes, serialised once by pydantic-core. Hot endpoints return this (and keep declaring
    `response_model` for the docs): a returned model is validated against `response_model` again, dumped to
    Python and only then encoded."""
    return Response(model.model_dump_json(), status_code=status_code, headers=headers, media_type="application/json")


class NulFreeModel(CamelModel):
    """Input from outside: NUL in any field, at any depth, is refused (PostgreSQL's text and jsonb cannot hold it)."""

    @field_validator("*", mode="after")
    @classmethod
    def _refuse_nul(cls, value: Any) -> Any:
        if contains_nul(value):
            raise ValueError("String must not contain NUL characters")
        return value


class RequestModel(NulFreeModel):
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


class PageParams(BaseModel):
    """`?page=&limit=`; the default limit returns a small account's whole list in one page."""

    page: int = Field(1, ge=1, le=1_000_000)
    limit: int = Field(100, ge=1, le=100)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit


# Query times (`?from=&to=`) outside these bounds match nothing stored, and at the edges of the calendar (year 1 at
# +14:00) are not even a time PostgreSQL or Python can convert to UTC: refused with 400, never a 500.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def _as_utc(value: datetime | None) -> datetime | None:
    return None if value is None else bounded_utc(value)


def bounded_utc(value: datetime) -> datetime:
    """`value` in UTC, if it is a time the database can compare with what it stores; ValueError otherwise."""
    # A naive time has no meaning against timestamptz; read it as UTC like every time on the wire.
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError(f"Time must be between {iso_utc(EARLIEST)} and {iso_utc(LATEST)}")
    return utc


QueryTime = Annotated[datetime | None, AfterValidator(_as_utc)]
