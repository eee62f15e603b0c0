"""The HTTP/1.1 client under every call between services: a lean exchange over aiohttp's connection pool.

httpx's own stack (httpcore + h11) parses HTTP in pure Python: about 1.8 ms of CPU per request on the shared
2-core machine, against 0.25 ms for aiohttp's C parser on the same requests. And httpx's objects cost CPU of
their own (a `Request` parses and re-encodes its URL, query and headers; a `Response` wraps headers and body),
so the hot paths (`InternalClient`, the gateway's forwarding) send through `exchange`: a URL string, header
pairs and bytes in, an `Answer` out, no httpx object on the way. httpx's transport API stays on top of the same
exchange for clients that want it (the gateway's readiness and docs calls), and `lean()` gives any other httpx
transport (tests' in-process `httpx.ASGITransport`) the exchange's interface, so callers have one code path.

Nothing is added or changed on the way: no default headers, no cookies, no redirects, no decompression (the
gateway passes bodies through as they are), the path goes byte for byte. aiohttp only frames the request: Host
from the URL, and Content-Length from the body (`0` when a POST, PUT, PATCH or DELETE has none) or chunked
when the body is a stream of unknown length. aiohttp's errors become the httpx errors callers already handle:
no connection is `ConnectError`/`ConnectTimeout`, no answer in time `ReadTimeout`, a broken or garbled exchange
`ReadError`/`RemoteProtocolError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

import aiohttp
import httpx
from yarl import URL

from lumiku_common import tracing

# aiohttp would otherwise add these when the request has none; a pass-through must send only what it was given.
_NOT_ADDED = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
# aiohttp sets framing itself from the body it sends (length, or chunked when unknown).
_FRAMING = frozenset({"transfer-encoding"})
# Below uvicorn's 5 s keep-alive: a connection the server is about to close is not reused.
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


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int = 100):
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=_NOT_ADDED,
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def exchange(
        self, method: str, url: str, headers: list[tuple[str, str]], body: Body, timeout: Timeouts
    ) -> _AiohttpAnswer:
        target = URL(url, encoded=True)  # encoded: the path and query go byte for byte
        with tracing.calling(method, target, headers) as span, _as_httpx_errors():
            response = await self._client().request(
                method,
                target,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=_timeout(timeout),
            )
            if span is not None:
                span.set_attribute("http.response.status_code", response.status)
        return _AiohttpAnswer(response)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """httpx's transport API, for httpx clients over this pool: the same exchange underneath."""
        headers = [(k, v) for k, v in request.headers.multi_items() if k not in _FRAMING]
        timeout = request.extensions.get("timeout") or {}
        answer = await self.exchange(request.method, str(request.url), headers, _body(request), timeout)
        return httpx.Response(
            answer.status,
            headers=answer.raw_headers,
            stream=_ResponseBody(answer),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason.encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _AiohttpAnswer:
    __slots__ = ("headers", "raw_headers", "response", "status")

    def __init__(self, response: aiohttp.ClientResponse):
        self.response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        self.raw_headers: Sequence[tuple[bytes, bytes]] = response.raw_headers

    @property
    def reason(self) -> str:
        return self.response.reason or ""

    async def read(self) -> bytes:
        try:
            with _as_httpx_errors():
                return await self.response.read()
        finally:
            await self.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for chunk in self.response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # A body read to its end gives the connection back to the pool; one left unread cannot be reused.
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()


def _body(request: httpx.Request) -> Body:
    """The request's bytes when it has them; its stream as it comes otherwise."""
    try:
        return request.content
    except httpx.RequestNotRead:
        return _chunks(request.stream)  # type: ignore[arg-type]


async def _chunks(stream: httpx.AsyncByteStream) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk


def _timeout(timeout: Timeouts) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None,
        connect=timeout.get("pool"),  # aiohttp's `connect` is the wait for a pooled or new connection
        sock_connect=timeout.get("connect"),
        sock_read=timeout.get("read"),
    )


class _ResponseBody(httpx.AsyncByteStream):
    def __init__(self, answer: _AiohttpAnswer):
        self.answer = answer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.answer.chunks():
            yield chunk

    async def aclose(self) -> None:
        await self.answer.aclose()


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out") from exc
    except aiohttp.ServerTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out") from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc)) from exc
    except aiohttp.ClientResponseError as exc:
        raise httpx.RemoteProtocolError(str(exc)) from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.InvalidURL(str(exc)) from exc
    except (aiohttp.ClientError, ConnectionError) as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
    except TimeoutError as exc:
        raise httpx.ReadTimeout("timed out") from exc


def lean(transport: httpx.AsyncBaseTransport) -> Exchange:
    """`transport`'s exchange: its own for an `AiohttpTransport`, through httpx's transport API for any other."""
    return transport if isinstance(transport, AiohttpTransport) else HttpxExchange(transport)


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
