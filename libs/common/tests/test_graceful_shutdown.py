"""Graceful shutdown of an API as a real process (uvicorn, as deployed): on SIGTERM it reports not-ready first,
keeps serving through its drain window, then finishes the request in flight before it exits."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator

import httpx
import pytest

from lumiku_devtools.processes import RealSuite, real_suite
from lumiku_devtools.testing import token_for

DRAIN_SECONDS = 1.5
BODY = json.dumps({"name": "Created while the process shut down"}).encode()


@pytest.fixture
async def suite() -> AsyncIterator[RealSuite]:
    env = {"projects": {"SHUTDOWN_DRAIN_SECONDS": str(DRAIN_SECONDS), "RUN_WORKERS": "false"}}
    async with real_suite(("projects",), "shutdown", service_env=env) as running:
        yield running


async def test_an_api_drains_its_in_flight_request_on_sigterm(suite: RealSuite) -> None:
    projects = suite.services["projects"]
    assert projects.proc is not None
    token = token_for(suite.settings["projects"], "drain-user")
    head = (
        "POST /api/apps/avatar-creator/projects HTTP/1.1\r\nHost: projects\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", projects.port)
    writer.write(head + BODY[:10])  # the request is in flight: its body is still arriving
    await writer.drain()
    await asyncio.sleep(0.3)

    projects.proc.send_signal(signal.SIGTERM)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{projects.port}") as client:
        await asyncio.sleep(0.3)
        ready = await client.get("/ready")  # still accepting, but telling load balancers to stop sending
        assert ready.status_code == 503 and ready.json()["checks"] == {"shutdown": "draining"}
        assert (await client.get("/health")).status_code == 200  # alive: liveness must not restart it

    await asyncio.sleep(DRAIN_SECONDS + 0.5)  # past the drain window: the server no longer accepts ...
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", projects.port)
    writer.write(BODY[10:])  # ... but the request in flight is served to its end
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.split(b" ")[1] == b"201", response
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["project"]["name"] == "Created while the process shut down"

    # uvicorn re-raises the SIGTERM it handled once shut down: the conventional "terminated by SIGTERM"
    # status (143 in a container), not a crash or a kill.
    assert await asyncio.to_thread(projects.proc.wait, 30) == -signal.SIGTERM
