"""AiohttpTransport against raw local sockets: what goes on the wire, what comes back, and how each way an
exchange can fail surfaces as the httpx error its callers handle. InternalClient builds its requests itself (no
httpx objects): on the wire they are what httpx built, and its answer carries what the clients read."""

from __future__ import annotations

import asyncio
import gzip
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlencode

import httpx
import pytest

from lumiku_common.auth import ServiceTokens
from lumiku_common.context import bound, request_id_var
from lumiku_common.http_transport import AiohttpTransport, HttpxExchange
from lumiku_common.internal import GatewayTimeout, InternalClient, UpstreamUnavailable, query

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


async def _send(transport: AiohttpTransport, request: httpx.Request) -> httpx.Response:
    response = await transport.handle_async_request(request)
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


@asynccontextmanager
async def transport() -> AsyncIterator[AiohttpTransport]:
    t = AiohttpTransport()
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


async def test_keeps_the_connection_and_no_cookies():
    connections = 0

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _keep_answering(reader, writer)

    async with raw_server(counted) as (url, seen), transport() as t:
        first = await _send(t, httpx.Request("GET", url))
        await _send(t, httpx.Request("GET", url))
    assert first.headers["set-cookie"] == "session=secret"
    assert connections == 1 and b"cookie" not in seen[1].lower()


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
    connections = 0

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(_answer(b"y" * 1_000_000))
            await writer.drain()

    async with raw_server(big) as (url, _), transport() as t:
        response = await t.handle_async_request(httpx.Request("GET", url))
        async for _ in response.aiter_raw():
            break
        await response.aclose()
        await _send(t, httpx.Request("GET", url))
    assert connections == 2


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
        t = AiohttpTransport(max_connections=1)
        try:
            first = asyncio.ensure_future(_send(t, httpx.Request("GET", url, extensions={"timeout": {"read": 5}})))
            await asyncio.sleep(0.1)
            with pytest.raises(httpx.ConnectTimeout):
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
        [client] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
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
