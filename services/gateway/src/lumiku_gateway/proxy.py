"""Forwarding: streams request and response bodies, pooled connections, upstream failures as 502/503/504."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence

import httpx
from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from lumiku_common.context import context_headers
from lumiku_common.errors import RETRY_LATER, error_response
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

# A path (and query) of these characters only, with no `.` or `..` segment, is one httpx's URL would send as it
# is: printable ASCII outside its percent-encode sets (a query may hold `?`, `` ` ``, `{` and `}`).
_PATH_CHARS = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in '"#<>?`{}')
_PLAIN = re.compile(f"[{re.escape(_PATH_CHARS)}]*(?:\\?[{re.escape(_PATH_CHARS + '?`{}')}]*)?".encode())
_DOT_SEGMENT = re.compile(rb"/\.\.?(?:[/?]|$)")
_MAX_URL_PART = 65536  # httpx refuses a longer path or query


def _url(upstream: Upstream, target: bytes) -> str:
    """The upstream's URL for the client's path and query: as the client sent them when httpx's URL would have
    kept them as they are (any client that encodes its URLs), otherwise as httpx's URL makes them (it encodes
    what a URL cannot hold and resolves dot segments, or refuses the URL)."""
    if len(target) <= _MAX_URL_PART and _PLAIN.fullmatch(target) and not _DOT_SEGMENT.search(target):
        return upstream.origin + target.decode("ascii")
    return str(upstream.base_url.copy_with(raw_path=target))


def resolved_path(raw_path: bytes) -> tuple[bytes, str] | None:
    """The raw and decoded path a service is sent for `raw_path` when it differs from it: dot segments resolved,
    as the forwarded URL resolves them (see `_url`); None when nothing changes. Raises httpx.InvalidURL."""
    if not _DOT_SEGMENT.search(raw_path):
        return None
    url = httpx.URL("http://upstream").copy_with(raw_path=raw_path)
    return url.raw_path, url.path


def request_headers(request: Request, allowed: frozenset[bytes] = _FORWARDED) -> list[tuple[str, str]]:
    """The client's `allowed` headers, values trimmed (a stray space is harmless, and the outgoing client
    refuses it), then this request's ids and the client's address."""
    trimmed = [(name, value.strip(b" \t")) for name, value in request.scope["headers"] if name in allowed]
    headers = [(name, value) for name, value in trimmed if not _CONTROL.search(value)]
    headers += [(name.encode(), value.encode()) for name, value in context_headers().items()]
    if request.client:
        headers.append((b"x-forwarded-for", request.client.host.encode()))
    return _text(headers)


def _text(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Headers as httpx decoded a set of them (all ASCII, else all UTF-8, else all Latin-1): what goes on (the
    client writes UTF-8) and what comes back are what they were through httpx."""
    for encoding in ("ascii", "utf-8"):
        try:
            return [(name.decode(encoding), value.decode(encoding)) for name, value in raw]
        except UnicodeDecodeError:
            continue
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]


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


def _response_headers(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """The upstream's headers to return, as httpx's `Headers.items()` gave them: names in lower case, a repeated
    one's values joined by ", "."""
    headers: dict[str, str] = {}
    for name, value in _text([(name.lower(), value) for name, value in raw]):
        # CORS is the gateway's decision alone (lumiku_gateway.cors): a service's would contradict it.
        if name not in _NOT_RETURNED and not name.startswith("access-control-"):
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def forward(upstream: Upstream, request: Request, *, whole: bool = False) -> Response:
    """Streams the request to the upstream and its response back; the path goes on byte for byte.

    `whole`: the gateway will rewrite the answer (composition), so it asks for it unencoded and in one piece.
    """
    service = upstream.name
    query: bytes = request.scope["query_string"]
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    has_body = request.method in _BODY_METHODS
    url = _url(upstream, raw_path + (b"?" + query if query else b""))
    headers = request_headers(request, _allowed(has_body, whole))
    body = await _body(request) if has_body else None
    try:
        answer = await upstream.exchange.exchange(request.method, url, headers, body, upstream.timeout)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):  # never reached: the client may retry
        log.warning("upstream_unavailable", service=service, path=request.url.path)
        return error_response(503, {"error": "Service unavailable", "service": service}, RETRY_LATER)
    except httpx.TimeoutException:
        log.warning("upstream_timeout", service=service, path=request.url.path)
        return error_response(504, {"error": "Upstream service timed out", "service": service})
    except httpx.TransportError as exc:
        log.warning("upstream_failed", service=service, path=request.url.path, error=repr(exc))
        return error_response(502, {"error": "Bad gateway", "service": service})
    length = answer.headers.get("content-length")
    headers_back = _response_headers(answer.raw_headers)
    if whole or (length is not None and length.isdigit() and int(length) <= _BUFFERED_BODY_LIMIT):
        # Small bodies (most JSON) in one piece: streaming them costs a task group per response, and a
        # StreamingResponse keeps reading the client's body (to watch for a disconnect) after an early 413.
        # Raw: any encoding passes as is.
        return Response(await answer.read(), status_code=answer.status, headers=headers_back)
    return StreamingResponse(
        answer.chunks(), status_code=answer.status, headers=headers_back, background=BackgroundTask(answer.aclose)
    )
