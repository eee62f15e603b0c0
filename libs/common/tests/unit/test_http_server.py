"""The suite's uvicorn protocol sends a whole small response in one write: what reaches the connection, write by
write, for each shape of answer an app can give (read off a recording transport; the limits on request heads are
tested against real processes in services/gateway/tests/test_http_limits.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from lumiku_common.http_server import LimitedHttpToolsProtocol

App = Any  # an ASGI callable


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.events.append(("write", bytes(data)))

    def writelines(self, list_of_data: Any) -> None:
        self.events.append(("writelines", b"".join(list_of_data)))

    def close(self) -> None:
        self.events.append(("close", b""))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    @property
    def writes(self) -> list[bytes]:
        return [data for kind, data in self.events if kind != "close"]


async def serve(app: App, request: bytes) -> tuple[LimitedHttpToolsProtocol, RecordingTransport]:
    config = Config(app, http=LimitedHttpToolsProtocol, lifespan="off", log_level="critical")
    config.load()
    protocol = LimitedHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    return protocol, transport


async def settled() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def answering(body: bytes, *, more: list[bytes] | None = None, wait: asyncio.Event | None = None) -> App:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json")]
        if more is None:
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if wait is not None:
            await wait.wait()
        await send({"type": "http.response.body", "body": body, "more_body": more is not None})
        for i, chunk in enumerate(more or []):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(more or []) - 1})

    return app


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

pytestmark = pytest.mark.unit


async def test_a_whole_response_is_one_write_head_and_body_together():
    _, transport = await serve(answering(b'{"ok":true}'), GET)
    await settled()
    [written] = transport.writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and written.endswith(b'\r\n\r\n{"ok":true}')


async def test_a_large_body_goes_with_its_head_without_being_copied_into_it():
    body = b"a" * (1024 * 1024)
    _, transport = await serve(answering(body), GET)
    await settled()
    assert [kind for kind, _ in transport.events] == ["writelines"]
    assert transport.writes[0].endswith(b"\r\n\r\n" + body)


async def test_a_head_without_a_body_still_leaves_in_the_same_turn_of_the_loop():
    _, transport = await serve(answering(b"{}"), b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    await settled()
    [written] = transport.writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and written.endswith(b"\r\n\r\n")


async def test_a_streamed_response_sends_its_head_before_its_body_is_ready():
    ready = asyncio.Event()
    _, transport = await serve(answering(b"first", more=[b"second"], wait=ready), GET)
    await settled()
    [head] = transport.writes
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in head
    ready.set()
    await settled()
    assert transport.writes[1:] == [b"5\r\nfirst\r\n", b"6\r\nsecond\r\n0\r\n\r\n"]


async def test_a_response_that_closes_the_connection_is_written_before_the_close():
    _, transport = await serve(answering(b"{}"), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await settled()
    assert [kind for kind, _ in transport.events] == ["write", "close"]
    assert transport.writes[0].endswith(b"\r\n\r\n{}")


async def test_an_app_failing_after_its_head_still_sends_the_head_then_closes():
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        raise RuntimeError("boom")

    _, transport = await serve(app, GET)
    await settled()
    assert [kind for kind, _ in transport.events] == ["write", "close"]
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")


async def test_keep_alive_answers_each_request_of_a_connection_in_one_write():
    protocol, transport = await serve(answering(b'{"n":1}'), GET)
    await settled()
    protocol.data_received(GET)
    await settled()
    assert len(transport.writes) == 2 and all(w.endswith(b'{"n":1}') for w in transport.writes)
