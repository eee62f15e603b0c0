"""Request context for every service: request/correlation ids, trace context, one access log line, the
response headers every answer carries, the request body's size limit, and a last-resort 500 in the spec's
error shape (never a traceback).

A body over the process's MAX_REQUEST_BODY_BYTES is 413 before it is read: at once when its Content-Length
says so, otherwise (chunked) as soon as the bytes received pass the limit.

A path or query string that decodes to control characters (NUL above all), to bytes that are not UTF-8, or
that holds a `%` not followed by two hex digits is refused here with 400, before any route sees it: such a
value can only be junk, and deeper down it fails in surprising places (PostgreSQL refuses NUL in text)."""

from __future__ import annotations

import json
import logging
import re
import time
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lumiku_common.context import (
    bound,
    child_traceparent,
    correlation_id_var,
    request_id_var,
    traceparent_var,
)
from lumiku_common.ids import new_id
from lumiku_common.logs import get_logger

LOGGER_NAME = "http"
log = get_logger(LOGGER_NAME)
_access_log = logging.getLogger(LOGGER_NAME)  # asked for the level first: the line's fields cost even if dropped
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_PATHS = {"/health", "/ready"}
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOT_PLAIN = re.compile(rb"[^\x20-\x24\x26-\x7e]")  # anything but printable ASCII without `%`
_ID_HEADERS = frozenset({b"x-request-id", b"x-correlation-id", b"traceparent"})
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})
TOO_LARGE = "Payload too large"
# Added to every response that does not set its own (the gateway's /media sets its own caching): answers
# are per user and must not be cached or sniffed into another content type.
DEFAULT_HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))


def _is_clean(raw: bytes) -> bool:
    """True when `raw` percent-decodes to UTF-8 text without control characters."""
    if not _NOT_PLAIN.search(raw):
        return True  # printable ASCII without escapes, what nearly every request has: nothing to decode
    if _BAD_ESCAPE.search(raw):
        return False
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not _CONTROL.search(text)


def _refusal(scope: Scope) -> str | None:
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    if not _is_clean(raw_path):
        return "Invalid request path"
    if not _is_clean(scope.get("query_string", b"")):
        return "Invalid query string"
    return None


def _with_defaults(status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    present = {name.lower() for name, _ in headers}
    added = [(name, value) for name, value in DEFAULT_HEADERS if name not in present]
    if status == 401 and b"www-authenticate" not in present:
        added.append((b"www-authenticate", b"Bearer"))  # RFC 9110 §15.5.2: a 401 names its scheme
    return [*headers, *added]


def _ids(scope: Scope) -> dict[bytes, str]:
    """The id headers the client sent (the first of each), those safe to log and pass on, and the body's
    framing headers; one pass."""
    found: dict[bytes, str] = {}
    for key, value in scope.get("headers", ()):
        if key in _ID_HEADERS and key not in found:
            text = value.decode("latin-1")
            found[key] = text if _SAFE_ID.match(text) else ""
        elif key in _BODY_HEADERS:
            found[key] = value.decode("latin-1")
    return found


class _ChunkedLimit:
    """A body without a Content-Length, counted as it arrives: past the limit, 413 is answered at once (unless
    the app has answered already) and the app hears that the client left; what it answers then is dropped."""

    def __init__(self, receive: Receive, send: Send, limit: int, message: str):
        self._receive, self._send, self._limit, self._message = receive, send, limit, message
        self._received, self._app_started, self._refused = 0, False, False

    async def receive(self) -> Message:
        if self._refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        self._received += len(message.get("body", b""))
        if self._received <= self._limit:
            return message
        self._refused = True
        if not self._app_started:
            await _send_json(self._send, 413, {"error": self._message})
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self._refused and not self._app_started:
            return
        self._app_started = True
        await self._send(message)

    @property
    def refused(self) -> bool:
        return self._refused


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int | None = None, body_too_large: str = TOO_LARGE):
        self.app = app
        self.max_body_bytes, self.body_too_large = max_body_bytes, body_too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ids = _ids(scope)
        request_id = ids.get(b"x-request-id") or new_id()
        correlation_id = ids.get(b"x-correlation-id") or request_id
        traceparent = child_traceparent(ids.get(b"traceparent"))
        with bound((request_id_var, request_id), (correlation_id_var, correlation_id), (traceparent_var, traceparent)):
            await self._handle(scope, receive, send, request_id, correlation_id, ids)

    def _too_large(self, ids: dict[bytes, str]) -> bool:
        length = ids.get(b"content-length", "")
        return self.max_body_bytes is not None and length.isdigit() and int(length) > self.max_body_bytes

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, correlation_id: str, ids: dict[bytes, str]
    ) -> None:
        started, status, response_started = time.perf_counter(), 500, False

        async def send_with_ids(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message["headers"] = [
                    *_with_defaults(status, list(message.get("headers", []))),
                    (b"x-request-id", request_id.encode()),
                    (b"x-correlation-id", correlation_id.encode()),
                ]
            await send(message)

        app_receive, app_send, chunked = receive, send_with_ids, None
        if self.max_body_bytes is not None and b"transfer-encoding" in ids:
            chunked = _ChunkedLimit(receive, send_with_ids, self.max_body_bytes, self.body_too_large)
            app_receive, app_send = chunked.receive, chunked.send
        try:
            if refusal := _refusal(scope):
                await _send_json(send_with_ids, 400, {"error": refusal})
            elif self._too_large(ids):
                await _send_json(send_with_ids, 413, {"error": self.body_too_large})
            else:
                await self.app(scope, app_receive, app_send)
        except Exception:
            if chunked is not None and chunked.refused:
                return  # the app failing on the disconnect it was told of, after the 413 went out
            log.exception("unhandled_error", method=scope["method"], path=scope["path"])
            if not response_started:
                await _send_json(send_with_ids, 500, {"error": "Internal server error", "requestId": request_id})
        finally:
            if scope["path"] not in _QUIET_PATHS and _access_log.isEnabledFor(logging.INFO):
                log.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    durationMs=round((time.perf_counter() - started) * 1000, 2),
                )


async def _send_json(send: Send, status: int, body: dict[str, str]) -> None:
    content = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
