"""uvicorn's httptools protocol with bounded request heads: every process of the suite serves HTTP with it.

httptools buffers a request line or header of any size before uvicorn sees it (a 50 MB header was accepted,
four of 100 MB took a process to 590 MB), so the limits are enforced here, while the head is being read:
a request line over `MAX_URL_BYTES` answers 414, a header over `MAX_HEADER_BYTES` or a header section over
`MAX_HEADERS_BYTES` answers 431, in the spec's error shape, and the connection is closed without reading on.
A request the parser refuses answers 400 in the same shape.

Used as `uvicorn --http lumiku_common.http_server:LimitedHttpToolsProtocol` (see lumiku_devtools.suite and
deploy/) and by `python -m lumiku_common.worker`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, NoReturn

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from lumiku_common.middleware import DEFAULT_HEADERS

MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024  # one header: name and value
MAX_HEADERS_BYTES = 64 * 1024  # the header section, framing (": " and CRLF) included
# Raw bytes of a head still unparsed: catches what the parser buffers before it calls back (a header is only
# handed over once complete). A read is at most one socket buffer, so this bounds memory per connection.
MAX_HEAD_BYTES = MAX_URL_BYTES + MAX_HEADERS_BYTES + 1024

PROTOCOL = "lumiku_common.http_server:LimitedHttpToolsProtocol"
# How long a server keeps an idle connection (uvicorn's default is 5 s). Longer than any client here keeps one
# for reuse (httpx 5 s, our pool 4 s, an ingress' upstream keep-alive 60 s): a request sent on a connection the
# server is closing at that moment is lost (reset), and only the side that closes first can avoid that.
KEEP_ALIVE_SECONDS = 75


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str


MALFORMED = Refusal(400, "Invalid HTTP request")
URL_TOO_LONG = Refusal(414, "Request URI too long")
HEADERS_TOO_LARGE = Refusal(431, "Request header fields too large")


class _Refused(Exception):
    """Raised in a parser callback: stops httptools from parsing further."""


class _HeadWithBody:
    """One response's view of the connection: uvicorn writes a response's head as soon as the app starts it,
    and its body apart, two sends for a whole small response, and for the peer two reads and two turns of its
    loop. The first write is held until the next one (the body, sent in the same turn by every app here) joins
    it, or, at the latest, the end of this turn of the event loop: a response that only starts, or streams
    later, loses nothing but that turn."""

    __slots__ = ("_first", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop = transport, loop
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if len(data) < _JOINED_MAX:
                self._transport.write(held + data)
            else:  # no copy of a large body: the transport sends both from its buffer
                self._transport.writelines((held, data))
            return
        if self._first:
            self._first, self._held = False, bytes(data)
            self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


_JOINED_MAX = 256 * 1024


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._refusal: Refusal | None = None
        self._in_head, self._head_bytes = True, 0
        self._url_bytes = self._headers_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # refused: nothing more is parsed while the connection closes
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)  # a callback below may refuse: see send_400_response
        if self._refusal is None and self._in_head and self._head_bytes > MAX_HEAD_BYTES:
            self._refusal = HEADERS_TOO_LARGE
            self._answer_refusal()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = self._headers_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)  # called per fragment, so a long URL is stopped as it arrives
        if self._url_bytes > MAX_URL_BYTES:
            self._refuse(URL_TOO_LONG)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._headers_bytes += size + 4
        if size > MAX_HEADER_BYTES or self._headers_bytes > MAX_HEADERS_BYTES:
            self._refuse(HEADERS_TOO_LARGE)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous and self.cycle is not None:
            self.cycle.transport = _HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._in_head = True
        super().on_message_complete()

    def _refuse(self, refusal: Refusal) -> NoReturn:
        # Raising stops the parser; httptools reports it as a parser error, which uvicorn answers through
        # send_400_response, where the refusal recorded here takes over.
        self._refusal = refusal
        raise _Refused(refusal.message)

    def send_400_response(self, msg: str) -> None:
        # Every request httptools cannot parse (bad chunk sizes, Content-Length with Transfer-Encoding, a NUL
        # in a header...) is answered in the spec's error shape too, instead of uvicorn's text/plain.
        self._refusal = self._refusal or MALFORMED
        self._answer_refusal()

    def _answer_refusal(self) -> None:
        assert self._refusal is not None
        body = json.dumps({"error": self._refusal.message}).encode()
        head = [STATUS_LINE[self._refusal.status]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [name + b": " + value + b"\r\n" for name, value in DEFAULT_HEADERS]  # as every app answer
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
