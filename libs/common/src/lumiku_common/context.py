"""Per-request / per-message context: the ids that every log line and every outgoing event carry."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)
causation_id_var: ContextVar[str | None] = ContextVar("causation_id", default=None)
traceparent_var: ContextVar[str | None] = ContextVar("traceparent", default=None)


@contextmanager
def bound(*values: tuple[ContextVar[str | None], str | None]) -> Iterator[None]:
    """Sets the context ids for the duration of one request or message, and restores them after."""
    tokens = [(var, var.set(value)) for var, value in values]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def context_headers() -> dict[str, str]:
    """The ids of the current request/message, as headers for a call to another service."""
    pairs = (
        ("x-request-id", request_id_var),
        ("x-correlation-id", correlation_id_var),
        ("traceparent", traceparent_var),
    )
    return {name: value for name, var in pairs if (value := var.get())}


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_traceparent(trace_id: str | None = None) -> str:
    """A W3C `traceparent` header value: version-traceid-spanid-flags."""
    return f"00-{trace_id or new_trace_id()}-{secrets.token_hex(8)}-01"


def child_traceparent(parent: str | None) -> str:
    """Same trace, new span; a malformed parent starts a new trace."""
    parts = (parent or "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        return new_traceparent(parts[1])
    return new_traceparent()
