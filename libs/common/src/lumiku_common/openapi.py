"""The spec's error bodies as OpenAPI, defined once: routers and endpoints declare the errors they can answer
with `responses(...)`, so each service's /openapi.json (and the gateway's merge of them) documents every
response a client can get, and schema fuzzing can hold every response to it.

    router = Router(prefix=..., responses=AUTHENTICATED)         # what any authenticated route may answer
    @router.put("/{id}", response_model=..., responses=responses(400, 404))

The bodies themselves are made in `lumiku_common.errors`; the models here only describe them.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, RootModel


class ErrorBody(BaseModel):
    """`{"error": "..."}`; some errors add fields (the gateway's 502/503/504 name the `service`)."""

    model_config = ConfigDict(extra="allow", title="ErrorBody")

    error: str


class ValidationIssue(BaseModel):
    """One zod-like issue: `code`, `path`, `message`, plus the fields of its code (`expected`, `minimum`, ...)."""

    model_config = ConfigDict(extra="allow", title="ValidationIssue")

    code: str
    path: list[str | int]
    message: str


class ValidationErrorBody(BaseModel):
    model_config = ConfigDict(title="ValidationErrorBody")

    error: Literal["Validation error"]
    details: list[ValidationIssue]


class BadRequestBody(RootModel[ValidationErrorBody | ErrorBody]):
    """400: a validation error (`details`), or another client error (`{"error": "Invalid JSON body"}`)."""

    model_config = ConfigDict(title="BadRequestBody")


class InsufficientCreditsBody(ErrorBody):
    model_config = ConfigDict(title="InsufficientCreditsBody")

    required: int
    current: int


class RateLimitedBody(ErrorBody):
    model_config = ConfigDict(title="RateLimitedBody", populate_by_name=True)

    retry_after: int = Field(alias="retryAfter", description="Seconds to wait, as in the Retry-After header")


_INTEGER = {"type": "integer", "minimum": 0}
_ERRORS: dict[int, tuple[type[BaseModel], str, dict[str, Any]]] = {
    400: (BadRequestBody, "Invalid request: a validation error with its `details`, or `{error}`", {}),
    401: (
        ErrorBody,
        "Missing, invalid or expired token",
        {"WWW-Authenticate": {"description": "`Bearer` (when no usable bearer token was sent)", "schema": {}}},
    ),
    402: (InsufficientCreditsBody, "Insufficient credits", {}),
    403: (ErrorBody, "Forbidden", {}),
    404: (ErrorBody, "Not found (another user's resource too)", {}),
    409: (ErrorBody, "Conflict (e.g. the same idempotency key with another body)", {}),
    410: (ErrorBody, "Gone", {}),
    413: (ErrorBody, "Body too large", {}),
    429: (
        RateLimitedBody,
        "Rate limit exceeded",
        {"Retry-After": {"description": "Seconds to wait", "required": True, "schema": _INTEGER}},
    ),
    502: (ErrorBody, "An upstream service failed", {}),
    503: (
        ErrorBody,
        "A service or dependency is unavailable",
        {"Retry-After": {"description": "Seconds to wait, when known", "schema": _INTEGER}},
    ),
    504: (ErrorBody, "An upstream service timed out", {}),
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` declaring these error status codes with the spec's bodies."""
    declared: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        model, description, headers = _ERRORS[code]
        declared[code] = {"model": model, "description": description, **({"headers": headers} if headers else {})}
    return declared


# Every route behind the gateway that needs a user token: the token, the rate limit, and the gateway's answers
# for a service that failed, is down or timed out.
# 400 too: any route refuses a path or query string with control characters or broken escapes (middleware).
AUTHENTICATED = responses(400, 401, 429, 502, 503, 504)

# FastAPI's default for routes with parameters; validation errors are answered as 400 (see errors.py).
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


def without_fastapi_422(app: FastAPI) -> None:
    """The app's OpenAPI without FastAPI's 422 `HTTPValidationError`, which these services never answer."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    if isinstance(operation, dict):
                        operation.get("responses", {}).pop("422", None)
            for name in _FASTAPI_VALIDATION:
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
