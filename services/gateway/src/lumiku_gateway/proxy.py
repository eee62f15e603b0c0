"""Forwarding: streams request and response bodies, pooled connections, upstream failures as 502/503/504."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from lumiku_common.context import context_headers
from lumiku_common.errors import error_response
from lumiku_common.logs import get_logger
from lumiku_gateway.upstreams import Upstream

log = get_logger(__name__)

# What a service may act on, and nothing else: cookies (the API authenticates by bearer token), a client's
# X-Service-Token or X-Forwarded-*, Host and hop-by-hop headers (RFC 9110 §7.6.1) all stay here.
_FORWARDED = frozenset(
    {
        b"accept",
        b"accept-encoding",
        b"accept-language",
        b"authorization",
        b"content-type",
        b"idempotency-key",
        b"if-match",
        b"if-modified-since",
        b"if-none-match",
        b"if-unmodified-since",
        b"last-event-id",  # resumes a generation's event stream
        b"prefer",  # `respond-async`: a generation answers 202 at once
        b"user-agent",
    }
)
# A body's length goes on only with the body itself (a chunked body goes on chunked, without one).
_WITH_BODY = _FORWARDED | {b"content-length"}
# Control characters (tab aside) cannot go into an outgoing header; a header carrying them is dropped.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Methods whose body the services read; the body of any other (a GET or DELETE with one) is not forwarded.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

# Not returned from an upstream: hop-by-hop, the ids the gateway's middleware sets, and Date/Server, which
# the gateway's own server adds (the upstream's would make duplicates).
_NOT_RETURNED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "date",
        "server",
        "x-request-id",
        "x-correlation-id",
        "traceparent",
    }
)
_BUFFERED_BODY_LIMIT = 256 * 1024


def request_headers(request: Request, allowed: frozenset[bytes] = _FORWARDED) -> list[tuple[bytes, bytes]]:
    """The client's `allowed` headers, values trimmed (a stray space is harmless, and the outgoing client
    refuses it), then this request's ids and the client's address."""
    trimmed = [(name, value.strip(b" \t")) for name, value in request.scope["headers"] if name in allowed]
    headers = [(name, value) for name, value in trimmed if not _CONTROL.search(value)]
    headers += [(name.encode(), value.encode()) for name, value in context_headers().items()]
    if request.client:
        headers.append((b"x-forwarded-for", request.client.host.encode()))
    return headers


async def _body(request: Request) -> bytes | AsyncIterator[bytes]:
    """A body that says it is small (JSON) goes on in one piece: cheaper than a stream, and whole again when the
    pool resends an idempotent request on a keep-alive connection the upstream had just closed (a stream
    would be resent from where it stopped). A large or chunked one (an upload) streams."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) <= _BUFFERED_BODY_LIMIT:
        return await request.body()
    return request.stream()


def _allowed(has_body: bool, whole: bool) -> frozenset[bytes]:
    allowed = _WITH_BODY if has_body else _FORWARDED
    return allowed - {b"accept-encoding"} if whole else allowed  # whole: read here, so asked for unencoded


def _response_headers(response: httpx.Response) -> dict[str, str]:
    # CORS is the gateway's decision alone (lumiku_gateway.cors): a service's would contradict it.
    return {k: v for k, v in response.headers.items() if k not in _NOT_RETURNED and not k.startswith("access-control-")}


async def forward(upstream: Upstream, request: Request, *, whole: bool = False) -> Response:
    """Streams the request to the upstream and its response back; the path goes on byte for byte.

    `whole`: the gateway will rewrite the answer (composition), so it asks for it unencoded and in one piece.
    """
    service = upstream.name
    query: bytes = request.scope["query_string"]
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    has_body = request.method in _BODY_METHODS
    outgoing = httpx.Request(
        request.method,
        upstream.base_url.copy_with(raw_path=raw_path + (b"?" + query if query else b"")),
        headers=request_headers(request, _allowed(has_body, whole)),
        content=await _body(request) if has_body else None,
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
