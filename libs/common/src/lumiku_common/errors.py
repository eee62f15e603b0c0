"""One mapping from exceptions to the spec's error bodies: `{"error": "..."}` plus optional fields."""

from __future__ import annotations

import errno
import json
import re
import socket
from collections.abc import Sequence
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from lumiku_common.logs import get_logger

log = get_logger(__name__)


class AppError(Exception):
    status_code = 400
    message = "Bad request"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any):
        self.message = message or self.message
        self.headers = headers
        self.extra = extra
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


class BadRequest(AppError):
    status_code = 400


class Unauthorized(AppError):
    status_code = 401
    message = "Unauthorized"


class Forbidden(AppError):
    status_code = 403
    message = "Forbidden"


class NotFound(AppError):
    status_code = 404
    message = "Not found"


class Conflict(AppError):
    status_code = 409
    message = "Conflict"


class Gone(AppError):
    status_code = 410
    message = "Gone"


class PayloadTooLarge(AppError):
    status_code = 413
    message = "Payload too large"


class InsufficientCredits(AppError):
    status_code = 402
    message = "Insufficient credits"

    def __init__(self, required: int, current: int):
        super().__init__(required=required, current=current)


class RateLimited(AppError):
    status_code = 429
    message = "Too many requests"

    def __init__(self, retry_after: int):
        super().__init__(headers={"Retry-After": str(retry_after)}, retryAfter=retry_after)


class ServiceUnavailable(AppError):
    """A dependency (database, broker, storage, another service) cannot be reached: the client may retry."""

    status_code = 503
    message = "Service unavailable"
    retry_after = 5  # seconds, when the dependency did not say

    def __init__(self, message: str | None = None, *, retry_after: int | None = None, **extra: Any):
        super().__init__(message, headers={"Retry-After": str(retry_after or self.retry_after)}, **extra)


RETRY_LATER = {"Retry-After": str(ServiceUnavailable.retry_after)}  # the headers of a 503 built by hand


# What a lost or unreachable dependency raises, as opposed to a bug: connection errors of the database driver
# (raw or wrapped by SQLAlchemy), pool timeouts, and the OS failing a socket or a disk.
_UNAVAILABLE_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT}
_UNAVAILABLE_TYPES: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)


def is_unavailable(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) means a dependency is down rather than our code being wrong."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, _UNAVAILABLE_TYPES):
            return True
        if isinstance(exc, OSError) and exc.errno in _UNAVAILABLE_ERRNOS:
            return True
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
        exc, seen = exc.__cause__ or exc.__context__ or getattr(exc, "orig", None), seen + 1
    return False


def is_outage(exc: BaseException) -> bool:
    """Whether work failed only because something it depends on is down (a database, broker or socket failure,
    or another service answering 503), so retrying later can succeed; a group fails so when all its parts do."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_outage(e) for e in exc.exceptions)
    return isinstance(exc, ServiceUnavailable) or is_unavailable(exc)


def error_response(status_code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, headers=headers)


# --- validation errors in the zod-like shape the spec shows -------------------------------------------

_JSON_TYPES = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
_EXPECTED = {
    "string_type": "string",
    "int_type": "integer",
    "int_parsing": "integer",
    "int_from_float": "integer",
    "float_type": "number",
    "float_parsing": "number",
    "bool_type": "boolean",
    "bool_parsing": "boolean",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
    "list_type": "array",
    "datetime_type": "date",
    "datetime_parsing": "date",
    "datetime_from_date_parsing": "date",
}


def _received(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and not value.is_integer():
        return "float"
    return _JSON_TYPES.get(type(value), "unknown")


def _path(loc: tuple[Any, ...]) -> list[Any]:
    return list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header", "form") else list(loc)


# pydantic's bound errors → zod's too_small/too_big: (code, bound key, pydantic's ctx key, inclusive, words).
_STRING_BOUNDS = {
    "string_too_short": ("too_small", "minimum", "min_length", True, "at least"),
    "string_too_long": ("too_big", "maximum", "max_length", True, "at most"),
}
_NUMBER_BOUNDS = {
    "greater_than_equal": ("too_small", "minimum", "ge", True, "greater than or equal to"),
    "greater_than": ("too_small", "minimum", "gt", False, "greater than"),
    "less_than_equal": ("too_big", "maximum", "le", True, "less than or equal to"),
    "less_than": ("too_big", "maximum", "lt", False, "less than"),
}


def _bound(kind: str, ctx: dict[str, Any]) -> dict[str, Any]:
    is_string = kind in _STRING_BOUNDS
    code, key, ctx_key, inclusive, words = (_STRING_BOUNDS if is_string else _NUMBER_BOUNDS)[kind]
    n = ctx.get(ctx_key)
    message = f"String must contain {words} {n} character(s)" if is_string else f"Number must be {words} {n}"
    kind_name = "string" if is_string else "number"
    return {"code": code, key: n, "type": kind_name, "inclusive": inclusive, "exact": False, "message": message}


def _enum(value: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
    listed = " | ".join(f"'{o}'" for o in options)
    message = f"Invalid enum value. Expected {listed}, received '{value}'"
    return {"code": "invalid_enum_value", "received": value, "options": options, "message": message}


def _wrong_type(kind: str, value: Any) -> dict[str, Any]:
    expected, received = _EXPECTED[kind], "float" if kind == "int_from_float" else _received(value)
    message = f"Expected {expected}, received {received}"
    return {"code": "invalid_type", "expected": expected, "received": received, "message": message}


_MISSING = {"code": "invalid_type", "expected": "string", "received": "undefined", "message": "Required"}


def _issue(err: dict[str, Any]) -> dict[str, Any] | None:
    """One pydantic error as the zod issue the spec shows; None for unknown keys (folded per object below)."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        return None
    if kind == "missing":
        issue = dict(_MISSING)
    elif kind in _STRING_BOUNDS or kind in _NUMBER_BOUNDS:
        issue = _bound(kind, ctx)
    elif kind in ("literal_error", "enum"):
        issue = _enum(value, ctx)
    elif kind in _EXPECTED:
        issue = _wrong_type(kind, value)
    else:
        message = str(ctx.get("error") or err.get("msg", "Invalid input"))
        issue = {"code": "custom", "message": message.removeprefix("Value error, ")}
    return {**issue, "path": _path(err["loc"])}


def zod_issues(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    issues = [issue for err in errors if (issue := _issue(err)) is not None]
    unknown: dict[tuple[Any, ...], list[str]] = {}
    for err in errors:
        if err["type"] == "extra_forbidden":
            path = tuple(_path(err["loc"]))
            unknown.setdefault(path[:-1], []).append(str(path[-1]))
    for parent, keys in unknown.items():
        listed = ", ".join(f"'{k}'" for k in keys)
        issues.append(
            {
                "code": "unrecognized_keys",
                "keys": keys,
                "path": list(parent),
                "message": f"Unrecognized key(s) in object: {listed}",
            }
        )
    return issues


def validation_error_response(errors: list[dict[str, Any]]) -> JSONResponse:
    if any(err["type"] == "json_invalid" for err in errors):
        return error_response(400, {"error": "Invalid JSON body"})
    return error_response(400, {"error": "Validation error", "details": zod_issues(errors)})


def _jsonable(errors: Sequence[Any]) -> list[dict[str, Any]]:
    # Inputs may hold bytes or other non-JSON values; keep only what the body can carry. NaN and ±Infinity (a
    # client's JSON may hold them: Python's reader takes them) come back as the strings "NaN", "Infinity", ...
    return json.loads(json.dumps(list(errors), default=str), parse_constant=str)


# Starlette's phrases are Title Case; ours read like the spec's ("Project not found").
_SENTENCE_CASE = {"Not Found": "Not found", "Method Not Allowed": "Method not allowed"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return error_response(exc.status_code, exc.body(), exc.headers)

    async def _dependency_down(request: Request, exc: Exception) -> JSONResponse:
        if not is_unavailable(exc):
            raise exc  # a bug: the request middleware logs it and answers 500
        log.warning("dependency_unavailable", method=request.method, path=request.url.path, error=repr(exc)[:500])
        unavailable = ServiceUnavailable()
        return error_response(unavailable.status_code, unavailable.body(), unavailable.headers)

    for kind in (OSError, sa_exc.SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError):
        app.add_exception_handler(kind, _dependency_down)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(_jsonable(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "Error"
        detail = _SENTENCE_CASE.get(detail, detail)
        return error_response(exc.status_code, {"error": detail}, getattr(exc, "headers", None))
