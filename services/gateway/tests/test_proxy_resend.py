"""A PUT whose keep-alive connection the upstream closes as the request arrives is sent again on a new one,
body and all (raw sockets stand in for the upstream, to close at that exact moment)."""

from __future__ import annotations

import asyncio
import json

from lumiku_devtools.testing import auth, running, settings_for_tests
from lumiku_gateway.main import create_app
from lumiku_gateway.routes import APP
from lumiku_gateway.settings import GatewaySettings


def _length(head: bytes) -> int:
    lowered = head.lower()
    return int(lowered.split(b"content-length:")[1].split(b"\r\n")[0]) if b"content-length:" in lowered else 0


async def test_a_put_resent_on_a_new_connection_goes_with_its_whole_body():
    connections = 0

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers each request with the size of its body; the first connection is closed, unanswered, as
        its second request's head arrives (the race a keep-alive connection can lose)."""
        nonlocal connections
        connections += 1
        first_connection, served = connections == 1, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if first_connection and served == 1:
                    return
                answer = json.dumps({"size": len(await reader.readexactly(_length(head)))}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(answer)
                )
                writer.write(answer)
                await writer.drain()
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    settings = settings_for_tests(GatewaySettings, service_urls={"avatars": url}, rate_limit_enabled=False)
    body = {"name": "x" * 5000}
    async with server, running(create_app(settings)) as api:
        headers = auth(settings, "alice")
        first = await api.put(f"{APP}/avatars/a1", json=body, headers=headers)
        resent = await api.put(f"{APP}/avatars/a1", json=body, headers=headers)
    assert first.status_code == 200 and resent.status_code == 200, resent.text
    sent = len(json.dumps(body, separators=(",", ":")))
    assert first.json()["size"] == sent and resent.json()["size"] == sent and connections == 2
