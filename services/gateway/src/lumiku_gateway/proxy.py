"""Forwarding: streams request and response bodies, pooled connections, upstream failures as 502/503/504."""

from __future__ import annotations

import httpx
from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from lumiku_common.context import context_headers
from lumiku_common.errors import error_response
from lumiku_common.logs import get_logger
from lumiku_gateway.upstreams import Upstream

log = get_logger(__name__)

# Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are never forwarded.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
}
_BUFFERED_BODY_LIMIT = 256 * 1024
_CONTEXT_HEADERS = {"x-request-id", "x-correlation-id", "traceparent"}
_IDENTITY = frozenset({"accept-encoding"})


def request_headers(request: Request, drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in request.headers.items() if k not in _HOP_BY_HOP | _CONTEXT_HEADERS | drop]
    headers += context_headers().items()
    if request.client:
        headers.append(("x-forwarded-for", request.client.host))
    return headers


def _response_headers(response: httpx.Response) -> dict[str, str]:
    # The gateway's own middleware sets the id headers; the upstream's would duplicate them.
    return {k: v for k, v in response.headers.items() if k not in _HOP_BY_HOP | _CONTEXT_HEADERS}


async def forward(upstream: Upstream, request: Request, *, whole: bool = False) -> Response:
    """Streams the request to the upstream and its response back; the path goes on byte for byte.

    `whole`: the gateway will rewrite the answer (composition), so it asks for it unencoded and in one piece.
    """
    service = upstream.name
    query: bytes = request.scope["query_string"]
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    has_body = request.method not in ("GET", "HEAD", "DELETE", "OPTIONS")
    outgoing = httpx.Request(
        request.method,
        upstream.base_url.copy_with(raw_path=raw_path + (b"?" + query if query else b"")),
        headers=request_headers(request, _IDENTITY if whole else frozenset()),
        content=request.stream() if has_body else None,
        extensions={"timeout": upstream.timeout},
    )
    try:
        response = await upstream.transport.handle_async_request(outgoing)
    except httpx.TimeoutException:
        log.warning("upstream_timeout", service=service, path=request.url.path)
        return error_response(504, {"error": "Upstream service timed out", "service": service})
    except httpx.ConnectError:
        log.warning("upstream_unavailable", service=service, path=request.url.path)
        return error_response(503, {"error": "Service unavailable", "service": service})
    except httpx.TransportError as exc:
        log.warning("upstream_failed", service=service, path=request.url.path, error=repr(exc))
        return error_response(502, {"error": "Bad gateway", "service": service})
    length = response.headers.get("content-length")
    if whole or (length is not None and length.isdigit() and int(length) <= _BUFFERED_BODY_LIMIT):
        # Small bodies (most JSON) in one piece: streaming them costs a task group per response, and a
        # StreamingResponse keeps reading the client's body (to watch for a disconnect) after an early 413.
        try:
            body = b"".join([chunk async for chunk in response.aiter_raw()])  # raw: any encoding passes as is
        finally:
            await response.aclose()
        return Response(body, status_code=response.status_code, headers=_response_headers(response))
    return StreamingResponse(
        response.aiter_raw(),
        status_code=response.status_code,
        headers=_response_headers(response),
        background=BackgroundTask(response.aclose),
    )
