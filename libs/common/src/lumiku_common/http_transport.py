"""The HTTP/1.1 client under every call between services: a lean exchange over a pool of our own connections.

httpx's own stack (httpcore + h11) parses HTTP in pure Python: about 1.8 ms of CPU per request on the shared
2-core machine. And httpx's objects cost CPU of their own (a `Request` parses and re-encodes its URL, query and
headers; a `Response` wraps headers and body), so the hot paths (`InternalClient`, the gateway's forwarding)
send through `exchange`: a URL string, header pairs and bytes in, an `Answer` out, no httpx object on the way.
Underneath is `Http1Transport`, connections parsed by httptools (lumiku_common.http1): aiohttp's client did the
same job before it, but building each request through its session, connector and request objects cost the
gateway about a quarter of its CPU per composed read. httpx's transport API stays on top of the same exchange
for clients that want it (the gateway's readiness and docs calls), and `lean()` gives any other httpx transport
(tests' in-process `httpx.ASGITransport`) the exchange's interface, so callers have one code path.

Nothing is added or changed on the way: no default headers, no cookies, no redirects, no decompression (the
gateway passes bodies through as they are), the path goes byte for byte. The transport only frames the request:
Host from the URL (unless given), and Content-Length (the one given, else the body's, `0` when a POST, PUT,
PATCH or DELETE has none) or chunked when the body is a stream of unknown length. Failures are the httpx errors
callers already handle: no connection is `ConnectError`/`ConnectTimeout`, a full pool `PoolTimeout`, no answer
in time `ReadTimeout`, a broken or garbled exchange `ReadError`/`RemoteProtocolError`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from lumiku_common import tracing
from lumiku_common.http1 import Http1Connection

# The transport frames the body it sends itself: the length it was given, else the body's, else chunked.
_FRAMING = frozenset({"transfer-encoding"})
_BODY_EXPECTED = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # these say `Content-Length: 0` when empty
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Well below the servers' keep-alive (lumiku_common.http_server.KEEP_ALIVE_SECONDS, and uvicorn's default 5 s
# for a server of another kind): a connection the server is about to close is not reused.
KEEPALIVE_SECONDS = 4.0

Body = bytes | AsyncIterable[bytes] | None
# httpx's names and meanings (`httpx.Timeout(...).as_dict()`): connect, read, write, pool, in seconds.
Timeouts = Mapping[str, float | None]


class Answer(Protocol):
    """An upstream's answer: status and headers at once; the body either read whole (which closes the answer)
    or streamed from `chunks()` and then closed. The body comes as it was sent (never decoded)."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Looked up by any case."""

    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]: ...

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Exchange(Protocol):
    async def exchange(
        self, method: str, url: str, headers: list[tuple[str, str]], body: Body, timeout: Timeouts
    ) -> Answer:
        """Sends `method` to `url` (already percent-encoded: it goes as it is) with exactly `headers` and `body`
        (an empty body is none); raises the httpx errors described in this module's docstring."""
        ...

    async def aclose(self) -> None: ...


class Http1Transport(httpx.AsyncBaseTransport):
    """A pool of keep-alive HTTP/1.1 connections (`Http1Connection`), per origin, at most `max_connections`
    exchanges at once; an idle connection is used again for `KEEPALIVE_SECONDS` and dropped once its peer closes
    it. An idempotent request whose used connection turns out closed before any answer (the peer's keep-alive
    ended as it was sent) is sent once more on a new one."""

    def __init__(self, max_connections: int = 100):
        self.max_connections = max_connections
        self._idle: dict[str, list[Http1Connection]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._origins: dict[str, _Origin] = {}

    async def exchange(
        self, method: str, url: str, headers: list[tuple[str, str]], body: Body, timeout: Timeouts
    ) -> _Http1Answer:
        origin, target = self._split(url)
        with tracing.calling(method, origin.host, target.partition("?")[0], headers) as span:
            head, chunked = _head(method, target, origin.host_header, headers, body)
            await self._acquire(timeout.get("pool"))
            try:
                connection = await self._send(origin, method, head, body, chunked, timeout)
            except BaseException:
                self._slots.release()  # type: ignore[union-attr]
                raise
            if span is not None:
                span.set_attribute("http.response.status_code", connection.status)
        return _Http1Answer(self, origin, connection, timeout.get("read"))

    async def _send(
        self, origin: _Origin, method: str, head: bytes, body: Body, chunked: bool, timeout: Timeouts
    ) -> Http1Connection:
        read = timeout.get("read")
        while True:
            connection = self._idle_connection(origin) or await self._connect(origin, timeout.get("connect"))
            try:
                if body is None or isinstance(body, bytes):
                    connection.send(head, body)
                else:
                    await connection.send_stream(head, body, chunked, timeout.get("write"))
                await connection.head(read)
            except httpx.ReadError:
                connection.close()
                # Sent on a connection its peer had closed: nothing of the request was taken, so once more.
                retry = connection.exchanges and not connection.received and method in _IDEMPOTENT
                if retry and (body is None or isinstance(body, bytes)):
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            connection.exchanges += 1
            if method == "HEAD":
                connection.without_body()
            return connection

    def _split(self, url: str) -> tuple[_Origin, str]:
        scheme_end = url.find("://")
        path_start = url.find("/", scheme_end + 3)
        key = url if path_start < 0 else url[:path_start]
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin.of(key)
        return origin, "/" if path_start < 0 else url[path_start:]

    async def _acquire(self, timeout: float | None) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        if not self._slots.locked():
            await self._slots.acquire()
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            raise httpx.PoolTimeout("no connection free in time") from None

    def _idle_connection(self, origin: _Origin) -> Http1Connection | None:
        """The most recently used idle connection; those idle too long (the oldest, at the front) are closed
        on the way, so the pool, not the server, ends them."""
        idle = self._idle.get(origin.key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        expired = 0
        while expired < len(idle) and now - idle[expired].idle_since >= KEEPALIVE_SECONDS:
            idle[expired].close()
            expired += 1
        del idle[:expired]
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _connect(self, origin: _Origin, timeout: float | None) -> Http1Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Http1Connection(loop),
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                    server_hostname=origin.tls_name,
                ),
                timeout,
            )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {origin.key} in time") from None
        except OSError as exc:
            raise httpx.ConnectError(f"{origin.key}: {exc}") from exc
        return connection

    def _release(self, origin: _Origin, connection: Http1Connection) -> None:
        """Ends an exchange: its connection back to the pool when its answer ended cleanly, else closed."""
        if connection.reusable:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(origin.key, []).append(connection)
        else:
            connection.close()
        if self._slots is not None:
            self._slots.release()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """httpx's transport API, for httpx clients over this pool: the same exchange underneath."""
        headers = [(k, v) for k, v in request.headers.multi_items() if k not in _FRAMING]
        timeout = request.extensions.get("timeout") or {}
        answer = await self.exchange(request.method, str(request.url), headers, _body(request), timeout)
        return httpx.Response(
            answer.status,
            headers=answer.raw_headers,
            stream=_ResponseBody(answer),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


@dataclass(frozen=True, slots=True)
class _Origin:
    key: str  # scheme://host[:port], as the URL spelt it
    host: str
    port: int
    host_header: str
    ssl: ssl.SSLContext | None
    tls_name: str | None

    @classmethod
    def of(cls, key: str) -> _Origin:
        url = httpx.URL(key)
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"not an http(s) URL: {key}")
        secure = url.scheme == "https"
        port = url.port or (443 if secure else 80)
        host_header = url.netloc.decode("ascii")
        context = ssl.create_default_context() if secure else None
        return cls(key, url.host, port, host_header, context, url.host if secure else None)


def _head(method: str, target: str, host: str, headers: list[tuple[str, str]], body: Body) -> tuple[bytes, bool]:
    """The request's head, and whether its body goes chunked (a stream of a length nobody gave)."""
    given = {name.lower() for name, _ in headers}
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    if "host" not in given:
        lines.insert(1, f"Host: {host}")
    chunked = False
    if "content-length" not in given:
        if body is not None and not isinstance(body, bytes):
            lines.append("Transfer-Encoding: chunked")
            chunked = True
        elif body or method in _BODY_EXPECTED:
            lines.append(f"Content-Length: {len(body or b'')}")
    text = "\r\n".join(lines)
    # A CR or LF inside a name or value would end the header early and start one the caller never wrote.
    if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
        raise httpx.LocalProtocolError("a header or the target holds a line break")
    return text.encode() + b"\r\n\r\n", chunked


class _Http1Answer:
    __slots__ = (
        "_connection",
        "_origin",
        "_read_timeout",
        "_released",
        "_transport",
        "headers",
        "raw_headers",
        "status",
    )

    def __init__(self, transport: Http1Transport, origin: _Origin, connection: Http1Connection, read: float | None):
        self._transport, self._origin, self._connection, self._read_timeout = transport, origin, connection, read
        self._released = False
        self.status = connection.status
        self.raw_headers: Sequence[tuple[bytes, bytes]] = connection.raw_headers
        # As httpx reads them (any case, repeated values joined), like the answers of any other httpx transport.
        self.headers: Mapping[str, str] = httpx.Headers(connection.raw_headers)

    async def read(self) -> bytes:
        try:
            return b"".join([chunk async for chunk in self.chunks()])
        finally:
            await self.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._released:  # the connection may carry another exchange by now
            return
        try:
            while (chunk := await self._connection.next_chunk(self._read_timeout)) is not None:
                yield chunk
        finally:  # ended, failed or abandoned: a caller whose stream raised may never call aclose
            await self.aclose()

    async def aclose(self) -> None:
        # A body read to its end gives the connection back to the pool; one left unread cannot be reused.
        if not self._released:
            self._released = True
            self._transport._release(self._origin, self._connection)


def _body(request: httpx.Request) -> Body:
    """The request's bytes when it has them; its stream as it comes otherwise."""
    try:
        return request.content
    except httpx.RequestNotRead:
        return _chunks(request.stream)  # type: ignore[arg-type]


async def _chunks(stream: httpx.AsyncByteStream) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk


class _ResponseBody(httpx.AsyncByteStream):
    def __init__(self, answer: _Http1Answer):
        self.answer = answer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.answer.chunks():
            yield chunk

    async def aclose(self) -> None:
        await self.answer.aclose()


def lean(transport: httpx.AsyncBaseTransport) -> Exchange:
    """`transport`'s exchange: its own for an `AiohttpTransport`, through httpx's transport API for any other."""
    return transport if isinstance(transport, Http1Transport) else HttpxExchange(transport)


class HttpxExchange:
    """Any httpx transport (tests' in-process `httpx.ASGITransport`, stand-ins that fail) as an `Exchange`."""

    def __init__(self, transport: httpx.AsyncBaseTransport):
        self.transport = transport

    async def exchange(
        self, method: str, url: str, headers: list[tuple[str, str]], body: Body, timeout: Timeouts
    ) -> Answer:
        raw = [(name.encode(), value.encode()) for name, value in headers]  # UTF-8, as aiohttp writes them
        request = httpx.Request(method, url, headers=raw, content=body or None, extensions={"timeout": timeout})
        return _HttpxAnswer(await self.transport.handle_async_request(request))

    async def aclose(self) -> None:
        await self.transport.aclose()


class _HttpxAnswer:
    def __init__(self, response: httpx.Response):
        self.response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers
        self.raw_headers: Sequence[tuple[bytes, bytes]] = response.headers.raw

    async def read(self) -> bytes:
        try:
            return b"".join([chunk async for chunk in self.chunks()])
        finally:
            await self.response.aclose()

    def chunks(self) -> AsyncIterator[bytes]:
        if self.response.is_stream_consumed:  # made whole (a stand-in's answer): its content is all there is
            return _whole(self.response.content)
        return self.response.aiter_raw()

    async def aclose(self) -> None:
        await self.response.aclose()


async def _whole(content: bytes) -> AsyncIterator[bytes]:
    yield content
