"""One HTTP/1.1 client connection: the request written in one go, the answer parsed by httptools (the C parser
uvicorn serves with), its body handed over as it arrives. lumiku_common.http_transport pools these.

An exchange waits on one future at a time (the answer's head, then more of its body), each with the read
timeout armed once: a small answer (head and body in one segment) costs one timer and one wake-up. Reading
pauses while more than `_HIGH_WATER` bytes of body wait for their reader, so a slow reader of a large answer
holds no more than that in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

import httptools
import httpx

_HIGH_WATER = 256 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


class _Unsolicited(Exception):
    """An answer begins after the one asked for ended: nothing of it is read, the connection is done."""


class Http1Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.exchanges = 0  # answers this connection has carried: a used one may have been closed by its peer
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._writable: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.head_done = self.complete = False
        self.keep_alive = True
        self.received = False  # any byte of an answer (a connection that fails before one may be retried)
        self.error: Exception | None = None
        self._body: list[bytes] = []
        self._buffered = 0
        self._sized = False  # the answer's end is framed (a length, chunks, or a status without a body)
        self._informational = False  # a 1xx answer ahead of the real one (103 Early Hints): skipped
        self._waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Unsolicited):  # what came before it was read
                self.keep_alive = False
                self.close()
                return
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP answer: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        if self.head_done and not self._sized and not self.complete:
            self.on_message_complete()  # an answer that ends when its connection does
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(httpx.ReadError(f"connection closed before the answer ended: {exc!r}"))
        self._wake_writer()

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    # --- httptools callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # the answer ended (or the connection is idle): a second one nobody asked for
            raise _Unsolicited

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self._sized = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status < 200:
            self._informational, self.raw_headers, self._sized = True, [], False
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._sized = self._sized or self.status in _NO_BODY_STATUS
        self.head_done = True
        self._wake()
        self._wake_writer()  # an answer before the whole body went: the rest is not sent

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True
        self._wake()

    # --- the exchange ----------------------------------------------------------------------------------

    def send(self, head: bytes, body: bytes | None) -> None:
        """The request at once: head and body in one segment."""
        self._reset()
        assert self.transport is not None
        self.transport.write(head + body if body else head)

    async def send_stream(self, head: bytes, body: AsyncIterable[bytes], chunked: bool, timeout: float | None) -> None:
        """A body as it comes (chunked when no length was given); stops early when the answer comes before it was
        all sent (the connection then ends with the answer)."""
        self._reset()
        assert self.transport is not None
        self.transport.write(head)
        try:
            async for chunk in body:
                if self.head_done or self.closed:
                    break
                if chunk:
                    self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await self._drained(timeout)
        except httpx.TransportError:
            raise
        except Exception as exc:  # the body's source failed (its client went away): nothing valid to finish
            self.close()
            raise httpx.WriteError(f"the request body failed: {exc!r}") from exc
        if self.head_done or self.closed:
            self.keep_alive = False
        elif chunked:
            self.transport.write(b"0\r\n\r\n")

    async def _drained(self, timeout: float | None) -> None:
        writable = self._writable
        if writable is None or self.head_done or self.closed:
            return
        try:
            await asyncio.wait_for(asyncio.shield(writable), timeout)
        except TimeoutError:
            self.close()
            raise httpx.WriteTimeout("the upstream took no more of the body in time") from None

    async def head(self, timeout: float | None) -> None:
        while not self.head_done:
            await self._wait(timeout)

    async def next_chunk(self, timeout: float | None) -> bytes | None:
        """The body that arrived since the last call (waiting for some); None once the answer has ended."""
        while not self._body:
            if self.complete:
                return None
            await self._wait(timeout)
        chunk = b"".join(self._body) if len(self._body) > 1 else self._body[0]
        self._body.clear()
        if self._buffered > _HIGH_WATER and self.transport is not None and not self.closed:
            self.transport.resume_reading()
        self._buffered = 0
        return chunk

    def without_body(self) -> None:
        """The answer to a HEAD: it ends with its head, whatever length it announces (the parser cannot be told,
        so the connection is not used again)."""
        self.complete, self.keep_alive = True, False

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def _wait(self, timeout: float | None) -> None:
        if self.error is not None:
            raise self.error
        self._waiter = waiter = self.loop.create_future()
        timer = None if timeout is None else self.loop.call_later(timeout, self._timed_out, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None
        if self.error is not None:
            raise self.error

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(httpx.ReadTimeout("no answer in time"))
            self.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _wake_writer(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self._wake()
