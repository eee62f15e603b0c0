"""Http1Transport against raw local sockets: what goes on the wire, what comes back, and how each way an
exchange can fail surfaces as the httpx error its callers handle. InternalClient builds its requests itself (no
httpx objects): on the wire they are what httpx built, and its answer carries what the clients read."""

from __future__ import annotations

import asyncio
import gzip
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
import pytest

from lumiku_common import http_transport
from lumiku_common.auth import ServiceTokens
from lumiku_common.context import bound, request_id_var
from lumiku_common.http_transport import Http1Transport, HttpxExchange
from lumiku_common.internal import GatewayTimeout, InternalClient, UpstreamUnavailable, query
from lumiku_devtools.testing import eventually

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server answering each connection with `handler`; yields its URL and the raw requests it read."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(_Recording(reader, seen), writer)  # type: ignore[arg-type]
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", seen


class _Recording:
    def __init__(self, reader: asyncio.StreamReader, seen: list[bytes]):
        self.reader, self.seen = reader, seen

    async def readuntil(self, separator: bytes) -> bytes:
        data = await self.reader.readuntil(separator)
        self.seen.append(data)
        return data

    async def readexactly(self, n: int) -> bytes:
        data = await self.reader.readexactly(n)
        self.seen.append(data)
        return data


def _answer(body: bytes = b"ok", headers: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), headers, body)


async def _keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request on the connection, reading a Content-Length body or a chunked one."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lowered = head.lower()
        if b"content-length:" in lowered:
            length = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        elif b"transfer-encoding: chunked" in lowered:
            while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) != 0:
                await reader.readexactly(size + 2)
            await reader.readuntil(b"\r\n")
        writer.write(_answer(b"answer %d" % len(head), b"Set-Cookie: session=secret\r\n"))
        await writer.drain()


async def _send(transport: Http1Transport, request: httpx.Request) -> httpx.Response:
    response = await transport.handle_async_request(request)
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


@asynccontextmanager
async def transport() -> AsyncIterator[Http1Transport]:
    t = Http1Transport()
    try:
        yield t
    finally:
        await t.aclose()


async def test_sends_the_path_byte_for_byte_and_only_the_headers_it_was_given():
    async with raw_server(_keep_answering) as (url, seen), transport() as t:
        url = f"{url}/api/a%2Fb/c%20d;v=1?q=%E2%9C%93&x"
        response = await _send(t, httpx.Request("GET", url, headers={"Authorization": "Bearer t"}))
    assert response.status_code == 200 and response.content.startswith(b"answer ")
    head = seen[0].decode()
    assert head.startswith("GET /api/a%2Fb/c%20d;v=1?q=%E2%9C%93&x HTTP/1.1\r\n")
    names = sorted(line.split(":")[0].lower() for line in head.split("\r\n")[1:] if line)
    assert names == ["authorization", "host"]


async def test_a_streamed_body_goes_chunked_and_a_sized_one_with_its_length():
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"abc", b"defg"):
            yield part

    async with raw_server(_keep_answering) as (url, seen), transport() as t:
        await _send(t, httpx.Request("POST", url, content=parts()))
        chunked = b"".join(seen)
        seen.clear()
        await _send(t, httpx.Request("PUT", url, content=b'{"a":1}', headers={"Content-Type": "application/json"}))
        sized = b"".join(seen)
    assert b"transfer-encoding: chunked" in chunked.lower() and b"abc" in chunked and b"defg" in chunked
    assert b"content-length: 7" in sized.lower() and sized.endswith(b'{"a":1}')
    assert sized.lower().count(b"content-type") == 1


@dataclass
class Connections:
    opened: int = 0
    ended: int = 0  # by the client, while the handler waited for its next request


def counted(handler: Handler) -> tuple[Handler, Connections]:
    """`handler`, counting the connections it serves and those the client ended."""
    connections = Connections()

    async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.opened += 1
        try:
            await handler(reader, writer)
        except asyncio.IncompleteReadError:
            connections.ended += 1

    return counting, connections


async def test_keeps_the_connection_and_no_cookies():
    handler, connections = counted(_keep_answering)
    async with raw_server(handler) as (url, seen), transport() as t:
        first = await _send(t, httpx.Request("GET", url))
        await _send(t, httpx.Request("GET", url))
    assert first.headers["set-cookie"] == "session=secret"
    assert connections.opened == 1 and b"cookie" not in seen[1].lower()


async def test_connections_idle_too_long_are_closed_by_the_pool_not_left_to_the_server(monkeypatch):
    """The pool ends what it will not reuse: at an exchange, every connection idle past KEEPALIVE_SECONDS is
    closed, also those under the fresher one it takes (the server would keep them open far longer)."""
    monkeypatch.setattr(http_transport, "KEEPALIVE_SECONDS", 1.0)
    handler, connections = counted(_keep_answering)
    async with raw_server(handler) as (url, _), transport() as t:
        await asyncio.gather(*(_send(t, httpx.Request("GET", url)) for _ in range(3)))
        await asyncio.sleep(0.7)
        await _send(t, httpx.Request("GET", url))  # one of the three, idle afresh from now
        await asyncio.sleep(0.6)  # the other two have been idle 1.3 s, that one 0.6 s
        await _send(t, httpx.Request("GET", url))
        await eventually(lambda: asyncio.sleep(0, connections.ended == 2), what="the two expired connections closed")
        assert connections.opened == 3


async def test_an_encoded_body_passes_as_it_came():
    body = gzip.compress(b"x" * 1000)

    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_answer(body, b"Content-Encoding: gzip\r\n"))
        await writer.drain()

    async with raw_server(gzipped) as (url, _), transport() as t:
        response = await t.handle_async_request(httpx.Request("GET", url))
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
    assert raw == body and response.headers["content-encoding"] == "gzip"


async def test_a_body_left_unread_does_not_go_back_to_the_pool():
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(_answer(b"y" * 1_000_000))
            await writer.drain()

    handler, connections = counted(big)
    async with raw_server(handler) as (url, _), transport() as t:
        response = await t.handle_async_request(httpx.Request("GET", url))
        async for _ in response.aiter_raw():
            break
        await response.aclose()
        await _send(t, httpx.Request("GET", url))
    assert connections.opened == 2


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(5)


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def _garbled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()


async def _cut_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    await writer.drain()


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (_silent, httpx.ReadTimeout),
        (_hang_up, httpx.ReadError),
        (_garbled, httpx.RemoteProtocolError),
        (_cut_mid_body, httpx.ReadError),
    ],
)
async def test_a_failed_exchange_is_the_httpx_error_callers_handle(handler, error):
    async with raw_server(handler) as (url, _), transport() as t:
        with pytest.raises(error):
            await _send(t, httpx.Request("POST", url, content=b"x", extensions={"timeout": {"read": 0.3}}))


async def test_no_listener_is_a_connect_error():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with transport() as t:
        with pytest.raises(httpx.ConnectError):
            await _send(t, httpx.Request("GET", f"http://127.0.0.1:{port}/"))


async def test_a_full_pool_waits_no_longer_than_the_pool_timeout():
    async with raw_server(_silent) as (url, _):
        t = Http1Transport(max_connections=1)
        try:
            first = asyncio.ensure_future(_send(t, httpx.Request("GET", url, extensions={"timeout": {"read": 5}})))
            await asyncio.sleep(0.1)
            with pytest.raises(httpx.PoolTimeout):
                await _send(t, httpx.Request("GET", url, extensions={"timeout": {"pool": 0.2}}))
            first.cancel()
        finally:
            await t.aclose()


async def test_with_tracing_on_a_call_is_a_client_span_whose_traceparent_it_carries():
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

    from lumiku_common import tracing

    exporter = InMemorySpanExporter()
    assert tracing.configure("transport-test", exporter)
    try:
        async with raw_server(_keep_answering) as (url, seen), transport() as t:
            parent = NonRecordingSpan(SpanContext(0x1A, 0x2B, is_remote=True, trace_flags=TraceFlags(1)))
            with trace.use_span(parent):  # the span of the request making the call
                headers = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}  # the request's, replaced
                await _send(t, httpx.Request("GET", f"{url}/internal/x", headers=headers))
        # Only this call's trace: a call another test left in flight may end while tracing is on here.
        [client] = [
            s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT and s.context.trace_id == 0x1A
        ]
    finally:
        tracing.shutdown()
    context = client.context
    assert client.parent is not None and (client.parent.span_id, context.trace_id) == (0x2B, 0x1A)
    assert client.attributes["http.response.status_code"] == 200
    sent = f"traceparent: 00-{context.trace_id:032x}-{context.span_id:016x}-01"
    assert sent in seen[0].decode().lower() and seen[0].lower().count(b"traceparent") == 1


async def test_a_header_goes_as_the_same_bytes_through_the_pool_and_through_any_httpx_transport():
    in_process: dict[bytes, bytes] = {}

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        in_process.update(scope["headers"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    headers = [("x-name", "caf\u00e9 \u2713")]
    answer = await HttpxExchange(httpx.ASGITransport(app=app)).exchange("GET", "http://in/x", headers, None, {})
    async with raw_server(_keep_answering) as (url, seen), transport() as t:
        await (await t.exchange("GET", f"{url}/x", list(headers), None, {})).read()
    assert answer.status == 204 and in_process[b"x-name"] == "caf\u00e9 \u2713".encode()
    assert b"\r\nx-name: " + in_process[b"x-name"] + b"\r\n" in seen[0]


# --- InternalClient over the exchange ---------------------------------------------------------------------

TOKENS = ServiceTokens("s" * 40, "tests")


def _request(raw: bytes) -> tuple[str, list[str], bytes]:
    """Request line, header lines (lower case, sorted: their order means nothing), body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    line, *headers = head.decode().split("\r\n")
    return line, sorted(h.lower() for h in headers), body


@pytest.mark.parametrize(
    ("method", "path", "params", "json"),
    [
        ("GET", "/internal/avatars/a%2Fb/owner", None, None),
        ("GET", "/internal/projects/p1", {"userId": "ü ser+1&x=y"}, None),
        ("GET", "/internal/avatars/by-projects", {"userId": "u", "projectIds": "a,b,c", "limitPerProject": 3}, None),
        ("POST", "/internal/credits/holds", None, {"userId": "u", "amount": 5, "description": 'é \n"q" ✓'}),
        ("POST", "/internal/credits/holds/h/release", {}, {"nested": {"list": [1, None, True]}}),
        ("DELETE", "/internal/x", None, None),
    ],
)
async def test_a_call_goes_on_the_wire_as_httpx_sent_it(method, path, params, json):
    async with raw_server(_keep_answering) as (url, seen), transport() as t:
        with bound((request_id_var, "req-1")):
            answer = await InternalClient(url, TOKENS, transport=t).request(method, path, params=params, json=json)
            ours = b"".join(seen)
            seen.clear()
            headers = {"X-Service-Token": TOKENS.token(), "x-request-id": "req-1"}
            await _send(t, httpx.Request(method, f"{url}{path}", params=params, json=json, headers=headers))
            theirs = b"".join(seen)
    assert _request(ours) == _request(theirs)
    assert (answer.status_code, answer.url, answer.headers["SET-COOKIE"]) == (200, f"{url}{path}", "session=secret")


def test_a_query_is_encoded_as_urlencode_encodes_it():
    rng = random.Random(11)
    alphabet = [chr(c) for c in range(0x100)] + ["✓", "𝄞", " ", "+", "%", "&", "=", ","]
    for _ in range(3000):
        params = {
            "".join(rng.choices(alphabet, k=rng.randint(0, 5))): rng.choice(
                ["".join(rng.choices(alphabet, k=rng.randint(0, 40))), rng.randint(-5, 10**12)]
            )
            for _ in range(rng.randint(1, 4))
        }
        assert query(params) == urlencode(params) == str(httpx.QueryParams(params))


async def test_the_answer_reads_as_the_clients_read_it():
    async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_answer(b'{"error": "x\xc3\xa9"}', b"Content-Type: application/json\r\nRetry-After: 7\r\n"))
        await writer.drain()

    async with raw_server(answering) as (url, _), transport() as t:
        answer = await InternalClient(url, TOKENS, transport=t).request("GET", "/internal/x", params={"a": "b"})
    assert answer.json() == {"error": "xé"} and answer.text == '{"error": "xé"}'
    assert answer.headers.get("retry-after") == "7" and answer.url == f"{url}/internal/x"


def _stand_in(answer: httpx.Response | Exception) -> httpx.AsyncBaseTransport:
    class StandIn(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if isinstance(answer, Exception):
                raise answer
            return answer

    return StandIn()


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (httpx.ConnectError("refused"), UpstreamUnavailable),
        (httpx.PoolTimeout("full"), UpstreamUnavailable),
        (httpx.ReadTimeout("slow"), GatewayTimeout),
        (httpx.RemoteProtocolError("garbled"), UpstreamUnavailable),
    ],
)
async def test_through_any_httpx_transport_failures_map_as_through_the_pool(error, raised):
    client = InternalClient("http://stand-in", TOKENS, transport=_stand_in(error))
    with pytest.raises(raised):
        await client.request("GET", "/internal/x")


async def test_a_transport_set_after_construction_is_the_one_used():
    client = InternalClient("http://stand-in", TOKENS, transport=_stand_in(httpx.ConnectError("down")))
    client.transport = _stand_in(httpx.Response(204, headers={"X-A": "1"}))
    answer = await client.request("GET", "/internal/x")
    assert (answer.status_code, answer.headers["x-a"], answer.content) == (204, "1", b"")


# --- the pool's own framing and parsing -------------------------------------------------------------------


async def _answer_once_then_drop_the_next(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keeps the connection after its first answer, then drops it on the next request unanswered: a peer whose
    keep-alive ended just as the request went."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(_answer(b"first"))
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("PUT", True), ("POST", False)])
async def test_an_idempotent_request_on_a_connection_its_peer_dropped_goes_once_more(method, retried):
    handler, connections = counted(_answer_once_then_drop_the_next)
    async with raw_server(handler) as (url, _), transport() as t:
        await _send(t, httpx.Request("GET", url))
        if retried:
            response = await _send(t, httpx.Request(method, url, content=b"{}"))
            assert response.content == b"first" and connections.opened == 2
        else:  # it may have been taken: sending it again could do it twice
            with pytest.raises(httpx.ReadError):
                await _send(t, httpx.Request(method, url, content=b"{}"))
            assert connections.opened == 1


async def test_an_answer_before_the_whole_streamed_body_ends_the_upload():
    sent = 0

    async def refuse_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 5\r\n\r\nlarge")
        await writer.drain()
        await asyncio.sleep(0.5)  # reads nothing more

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += 1
            yield b"z" * 65536
            await asyncio.sleep(0)

    async with raw_server(refuse_early) as (url, _), transport() as t:
        response = await _send(t, httpx.Request("POST", url, content=endless()))
    assert (response.status_code, response.content) == (413, b"large") and sent < 1000


async def test_a_large_answer_arrives_whole_through_a_slow_reader():
    body = bytes(range(256)) * 20_000  # 5 MB: reading pauses while the reader is behind

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_answer(body))
        await writer.drain()

    async with raw_server(large) as (url, _), transport() as t:
        answer = await t.exchange("GET", url, [], None, {"read": 5})
        parts = []
        async for chunk in answer.chunks():
            parts.append(chunk)
            await asyncio.sleep(0.001)
        await answer.aclose()
    assert b"".join(parts) == body


@pytest.mark.parametrize(
    ("wire", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n", b"abcdefg"),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", b"until the end"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    ],
)
async def test_an_answer_framed_any_way_http_allows_reads_whole(wire, body):
    async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(wire)
        await writer.drain()
        if b"Connection: close" in wire:
            writer.close()
        else:
            await asyncio.sleep(0.5)

    async with raw_server(answering) as (url, _), transport() as t:
        answer = await t.exchange("GET", url, [], None, {"read": 2})
        assert await answer.read() == body
    assert "link" not in answer.headers


async def test_a_head_answer_ends_with_its_head():
    async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with raw_server(answering) as (url, _), transport() as t:
        answer = await t.exchange("HEAD", url, [], None, {"read": 0.5})
        assert (answer.status, answer.headers["content-length"], await answer.read()) == (200, "1000", b"")


@pytest.mark.parametrize("header", [("x-a", "1\r\nx-injected: 1"), ("x-a\r\nx-b", "1"), ("x-a", "1\nx-b: 2")])
async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(header):
    async with raw_server(_keep_answering) as (url, seen), transport() as t:
        with pytest.raises(httpx.LocalProtocolError):
            await t.exchange("GET", url, [header], None, {})
    assert seen == []


# --- sloppy peers, and a stream nobody closes -----------------------------------------------------------


@pytest.mark.parametrize("together", [True, False], ids=["same-segment", "before-the-reader-read"])
async def test_bytes_after_an_answer_ended_are_not_read_as_part_of_it(together):
    """A sloppy peer writes a second answer nobody asked for (a 408 as its keep-alive ends, a duplicate): it
    must not be appended to the answer being read, nor its headers to the answer's."""

    async def twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        stray = b"HTTP/1.1 408 Request Timeout\r\nX-Stray: 1\r\nContent-Length: 5\r\n\r\nstray"
        writer.write(_answer(b"ok") + stray if together else _answer(b"ok"))
        await writer.drain()
        if not together:
            await asyncio.sleep(0.05)
            writer.write(stray)
            await writer.drain()
        await asyncio.sleep(0.5)

    async with raw_server(twice) as (url, _), transport() as t:
        answer = await t.exchange("GET", url, [], None, {"read": 2})
        await asyncio.sleep(0.2)  # a reader a little behind
        assert (await answer.read(), answer.status, "x-stray" in answer.headers) == (b"ok", 200, False)


async def test_a_connection_its_peer_answered_unasked_while_idle_is_not_used_again():
    """An idle connection that received an answer (a 408 as the peer's keep-alive ends, before its FIN) is done:
    a POST sent on it would be lost (it is not resent)."""
    connections = 0

    async def then_408(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if connections > 1:
            await _keep_answering(reader, writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_answer(b"first"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)  # a lingering close: reads nothing more

    async with raw_server(then_408) as (url, _), transport() as t:
        await (await t.exchange("GET", url, [], None, {"read": 2})).read()
        await asyncio.sleep(0.15)
        answer = await t.exchange("POST", url, [], b"{}", {"read": 2})
        assert (answer.status, (await answer.read())[:7]) == (200, b"answer ")


async def test_a_streamed_answer_whose_peer_closes_mid_body_gives_its_slot_back():
    """The gateway streams an answer with `StreamingResponse(answer.chunks(), background=aclose)`: when the
    upstream closes mid-body the stream raises and the background never runs; the pool slot must not leak."""
    from starlette.background import BackgroundTask
    from starlette.responses import StreamingResponse

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _cut_mid_body(reader, writer)

    async def receive() -> dict:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        pass

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}}
    async with raw_server(cut) as (url, _):
        t = Http1Transport(max_connections=1)
        try:
            answer = await t.exchange("GET", url, [], None, {"read": 2})
            response = StreamingResponse(answer.chunks(), background=BackgroundTask(answer.aclose))
            with pytest.raises(httpx.ReadError):
                await response(scope, receive, send)
            second = await t.exchange("GET", url, [], None, {"read": 2, "pool": 0.5})  # PoolTimeout: leaked
            await second.aclose()
        finally:
            await t.aclose()
