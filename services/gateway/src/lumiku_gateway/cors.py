"""CORS, decided once for the suite, here: only origins in `CORS_ORIGINS` may read answers, with credentials;
the gateway answers their preflights itself (services never see an OPTIONS and never emit CORS headers).

Outermost middleware, so every answer a listed origin gets — errors included — is readable by it.
"""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lumiku_common.middleware import DEFAULT_HEADERS

METHODS = b"GET, POST, PUT, PATCH, DELETE"
# What the API reads: Prefer (respond-async generate) and Last-Event-ID (resuming the generation stream) too.
ALLOWED_HEADERS = (
    b"Authorization, Content-Type, Idempotency-Key, Prefer, Last-Event-ID, X-Request-Id, X-Correlation-Id, Traceparent"
)
# Beyond the CORS-safelisted response headers, what a browser client needs to read (Location: a 202's generation).
EXPOSED_HEADERS = b"Location, Retry-After, Idempotent-Replayed, X-Request-Id, X-Correlation-Id, X-Composition-Degraded"
MAX_AGE = b"600"


class CorsMiddleware:
    def __init__(self, app: ASGIApp, origins: list[str]):
        self.app = app
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if scope["method"] == "OPTIONS" and origin and "access-control-request-method" in headers:
            await self._preflight(send, origin)
            return
        allowed = origin is not None and origin in self.origins

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self._simple(origin if allowed else None)]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _simple(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        vary = [(b"vary", b"Origin")] if self.origins else []  # the answer differs by origin only when any is listed
        if origin is None:
            return vary
        return [*self._allow(origin), (b"access-control-expose-headers", EXPOSED_HEADERS), *vary]

    @staticmethod
    def _allow(origin: str) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-credentials", b"true"),
        ]

    async def _preflight(self, send: Send, origin: str) -> None:
        # Answered outside RequestContextMiddleware (so that every other answer gets CORS headers): the
        # headers it adds to every answer are added here.
        headers = [*DEFAULT_HEADERS, (b"vary", b"Origin")]
        if origin not in self.origins:
            body = json.dumps({"error": "Origin not allowed"}).encode()
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        headers += [
            *self._allow(origin),
            (b"access-control-allow-methods", METHODS),
            (b"access-control-allow-headers", ALLOWED_HEADERS),
            (b"access-control-max-age", MAX_AGE),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
