"""Bounded request heads on every port (lumiku_common.http_server), against real uvicorn processes started
with the suite's one command line: 431 for a header or header section too large, 414 for a request line too
long, in the spec's error shape, and memory that stays flat while clients send 100 MB headers; 413 for a body
over the process's limit, before it is read; and idle connections kept longer than clients keep them."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the process helpers beside this file

from lumiku_common.http_server import KEEP_ALIVE_SECONDS, MAX_HEADER_BYTES, MAX_HEADERS_BYTES, MAX_URL_BYTES
from lumiku_devtools.processes import Process, RealSuite, exchange, read_response, real_suite
from lumiku_devtools.testing import free_port

TOO_LARGE = {"error": "Request header fields too large"}


@pytest.fixture(scope="module")
async def suite() -> AsyncIterator[RealSuite]:
    async with real_suite(("projects",), "limits") as running:
        yield running


@pytest.fixture(scope="module")
async def worker(suite: RealSuite) -> AsyncIterator[Process]:
    """`python -m lumiku_common.worker projects`: its probe port is served by its own uvicorn.run."""
    port = free_port()
    command = [sys.executable, "-m", "lumiku_common.worker", "projects", "--host", "127.0.0.1", "--port", str(port)]
    process = Process(command, port, suite.services["projects"].env)
    process.start()
    try:
        await process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(params=["gateway", "projects", "projects-worker"])
def port(request: pytest.FixtureRequest, suite: RealSuite) -> int:
    if request.param == "projects-worker":
        process: Process = request.getfixturevalue("worker")
        return process.port
    return suite.gateway.port if request.param == "gateway" else suite.services["projects"].port


def get(path: str, *headers: bytes) -> bytes:
    return b"".join([f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode(), *headers, b"Connection: close\r\n\r\n"])


async def test_one_header_over_16_kb_is_431(port):
    response = await exchange(port, get("/health", b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 1) + b"\r\n"))
    assert (response.status, response.json()) == (431, TOO_LARGE)
    assert response.header("connection") == ["close"]
    under = await exchange(port, get("/health", b"X-Big: " + b"a" * (MAX_HEADER_BYTES - 100) + b"\r\n"))
    assert under.status == 200


async def test_headers_summing_over_64_kb_are_431(port):
    each = b"a" * 8000  # every one well under the per-header limit
    headers = [b"X-H%d: %s\r\n" % (i, each) for i in range(MAX_HEADERS_BYTES // len(each) + 1)]
    response = await exchange(port, get("/health", *headers))
    assert (response.status, response.json()) == (431, TOO_LARGE)


async def test_many_tiny_headers_are_431(suite):
    headers = [b"a%d: b\r\n" % i for i in range(15_000)]  # 2-6 bytes each: the framing counts
    response = await exchange(suite.gateway.port, get("/health", *headers))
    assert (response.status, response.json()) == (431, TOO_LARGE)


async def test_request_line_over_8_kb_is_414(port):
    response = await exchange(port, get("/health?q=" + "a" * MAX_URL_BYTES))
    assert (response.status, response.json()) == (414, {"error": "Request URI too long"})
    path = await exchange(port, get("/" + "a" * (MAX_URL_BYTES * 4)))
    assert path.status == 414


async def _send_huge_header(port: int, megabytes: int) -> int:
    """Writes a header of `megabytes` MB until the server hangs up; returns the bytes it got to write."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    sent, chunk = 0, b"a" * (1024 * 1024)
    try:
        writer.write(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        for _ in range(megabytes):
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 10)
            sent += len(chunk)
    except (ConnectionError, TimeoutError):
        pass  # the server refused and closed: what we want
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return sent


async def test_four_100_mb_headers_leave_memory_flat_and_health_responsive(suite: RealSuite):
    gateway: Process = suite.gateway
    before = gateway.rss_mib()
    senders = [asyncio.create_task(_send_huge_header(gateway.port, 100)) for _ in range(4)]
    started = time.monotonic()
    health = await exchange(gateway.port, get("/health"))
    health_seconds = time.monotonic() - started
    sent = await asyncio.gather(*senders)
    after = gateway.rss_mib()
    print(f"gateway RSS before {before:.1f} MiB, after 4 x 100 MB headers {after:.1f} MiB; sent {sent} bytes")
    assert health.status == 200 and health_seconds < 2
    assert max(sent) < 20 * 1024 * 1024  # hung up early, not after reading 100 MB
    assert after - before < 16, (before, after)
    assert gateway.alive and (await exchange(gateway.port, get("/health"))).status == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    ],
    ids=["nul-in-header", "length-and-chunked", "bad-chunk-size"],
)
async def test_unparseable_requests_are_400_in_the_spec_shape(port, request_bytes):
    response = await exchange(port, request_bytes)
    assert (response.status, response.json()) == (400, {"error": "Invalid HTTP request"})


async def test_a_connection_idle_past_a_clients_keep_alive_still_answers(suite: RealSuite, worker: Process):
    """httpx drops a connection idle for 5 s, uvicorn by default closes it at 5 s: a request sent on it as the
    server closes it is reset (seen as a ReadError in a test's client). The server keeps it longer, so the client
    is always the side that closes."""
    assert KEEP_ALIVE_SECONDS > 60  # an ingress keeps upstream connections up to 60 s
    ports = (suite.gateway.port, suite.services["projects"].port, worker.port)
    connections = [await asyncio.open_connection("127.0.0.1", port) for port in ports]
    keep_alive = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        for idle in (0, 6):  # 6 s: past both 5 s defaults
            await asyncio.sleep(idle)
            for reader, writer in connections:
                writer.write(keep_alive)
                response = await asyncio.wait_for(read_response(reader), 15)
                assert response.status == 200 and response.header("connection") != ["close"]
    finally:
        for _, writer in connections:
            writer.close()


PROJECTS = "/api/apps/avatar-creator/projects"
BODY_TOO_LARGE = {"error": "Payload too large"}


def post(path: str, *headers: bytes, body: bytes = b"") -> bytes:
    return b"".join([f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode(), *headers, b"Connection: close\r\n\r\n", body])


@pytest.mark.parametrize(("where", "limit"), [("gateway", 64 * 1024 * 1024), ("projects", 1024 * 1024)])
async def test_a_body_declared_over_the_limit_is_413_before_it_is_sent(suite: RealSuite, where: str, limit: int):
    """Only the head goes out: the answer comes although not one byte of the body does."""
    process = suite.gateway if where == "gateway" else suite.services["projects"]
    head = post(PROJECTS, b"Content-Type: application/json\r\n", f"Content-Length: {limit + 1}\r\n".encode())
    response = await exchange(process.port, head)
    assert (response.status, response.json()) == (413, BODY_TOO_LARGE)
    assert response.header("cache-control") == ["no-store"] and response.header("x-request-id")


async def test_a_chunked_body_past_the_limit_is_refused_and_the_sender_cut_off(suite: RealSuite):
    """No Content-Length: the projects service counts what arrives and gives up once it passes 1 MiB, without
    waiting for the 100 MB the client would go on sending. Its 413 reaches a client that stops writing to
    listen; one that keeps writing may see the connection reset first (the server closes with the client's
    bytes unread), as with any server that refuses a body mid-stream."""
    reader, writer = await asyncio.open_connection("127.0.0.1", suite.services["projects"].port)
    writer.write(post(PROJECTS, b"Content-Type: application/json\r\n", b"Transfer-Encoding: chunked\r\n"))
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
    sent = 0
    answer = asyncio.create_task(read_response(reader))
    try:
        while not answer.done() and sent < 100 * 1024 * 1024:
            writer.write(chunk)
            await writer.drain()
            sent += 64 * 1024
        response = await asyncio.wait_for(answer, 15)
        assert (response.status, response.json()) == (413, BODY_TOO_LARGE)
    except ConnectionError:  # reset while writing or reading: the server hung up
        pass
    finally:
        writer.close()
        answer.cancel()
    assert 1024 * 1024 < sent < 20 * 1024 * 1024


async def test_a_body_under_the_limit_is_not_refused(suite: RealSuite):
    body = b'{"name": "Small"}'
    head = (b"Content-Type: application/json\r\n", f"Content-Length: {len(body)}\r\n".encode())
    response = await exchange(suite.services["projects"].port, post(PROJECTS, *head, body=body))
    assert response.status == 401  # read, parsed and answered: this request carries no token
