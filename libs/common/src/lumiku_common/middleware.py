"""Request context for every service: request/correlation ids, trace context, one access log line, and a
last-resort 500 in the spec's error shape (never a traceback)."""

from __future__ import annotations

import json
import re
import time

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
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_PATHS = {"/health", "/ready"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            text = value.decode("latin-1")
            return text if _SAFE_ID.match(text) else None
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _header(scope, b"x-request-id") or new_id()
        correlation_id = _header(scope, b"x-correlation-id") or request_id
        traceparent = child_traceparent(_header(scope, b"traceparent"))
        with bound((request_id_var, request_id), (correlation_id_var, correlation_id), (traceparent_var, traceparent)):
            await self._handle(scope, receive, send, request_id, correlation_id)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, request_id: str, correlation_id: str) -> None:
        started, status, response_started = time.perf_counter(), 500, False

        async def send_with_ids(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode()),
                    (b"x-correlation-id", correlation_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        except Exception:
            log.exception("unhandled_error", method=scope["method"], path=scope["path"])
            if not response_started:
                await self._internal_error(send_with_ids, request_id)
        finally:
            if scope["path"] not in _QUIET_PATHS:
                log.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    durationMs=round((time.perf_counter() - started) * 1000, 2),
                )

    @staticmethod
    async def _internal_error(send: Send, request_id: str) -> None:
        body = json.dumps({"error": "Internal server error", "requestId": request_id}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
