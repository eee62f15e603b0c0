"""Dot segments in a raw request path: the gateway routes, authorises and rate-limits the path the service will
be sent, not the one the client wrote. The forwarded URL resolves `.` and `..` (httpx does), so a path routed
by its `/api/credits(/.*)?` or `.../generations(/.*)?` prefix could land anywhere on that service: its
`/metrics`, `/internal/...`, or another route's endpoint without that route's rate limit."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request

from lumiku_devtools.processes import exchange
from lumiku_devtools.testing import RUN_ID, served, settings_for_tests, token_for
from lumiku_gateway.main import create_app
from lumiku_gateway.settings import GatewaySettings

APP = "/api/apps/avatar-creator"


def recording_app(seen: list[str]) -> FastAPI:
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def echo(request: Request, path: str) -> dict:
        seen.append(request.url.path)
        return {"path": request.url.path}

    return app


@contextlib.asynccontextmanager
async def gateway(seen: list[str], **overrides) -> AsyncIterator[tuple[int, str]]:
    """A real gateway socket in front of upstreams that record every path they are asked for."""
    overrides.setdefault("rate_limit_enabled", False)
    names = ("projects", "avatars", "generation", "credits", "usage")
    settings = settings_for_tests(GatewaySettings, service_urls={n: f"http://{n}" for n in names}, **overrides)
    transports = {n: httpx.ASGITransport(app=recording_app(seen)) for n in names}
    async with served(create_app(settings, transports)) as url:
        yield int(url.rsplit(":", 1)[1]), token_for(settings, f"dots-{RUN_ID}")


def get(path: bytes, token: str, method: bytes = b"GET") -> bytes:
    head = b"Host: x\r\nAuthorization: Bearer %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % token.encode()
    return b"%s %s HTTP/1.1\r\n%s" % (method, path, head)


@pytest.mark.parametrize(
    "path",
    [
        b"/api/credits/../../metrics",
        b"/api/credits/../../internal/credits/holds",
        b"/api/apps/avatar-creator/generations/../../../../metrics",
        b"/api/apps/avatar-creator/generations/./../../../../internal/avatars/x",
    ],
)
async def test_dot_segments_never_reach_a_service_outside_the_api(path):
    seen: list[str] = []
    async with gateway(seen) as (port, token):
        response = await exchange(port, get(path, token))
    assert response.status == 404, (response.status, response.body)
    assert seen == []


async def test_dot_segments_resolving_to_a_routed_path_reach_its_owner():
    seen: list[str] = []
    async with gateway(seen) as (port, token):
        response = await exchange(port, get(f"{APP}/projects/../projects".encode(), token))
    assert response.status == 200 and seen == [f"{APP}/projects"]


async def test_dot_segments_do_not_escape_the_generation_rate_limit():
    seen: list[str] = []
    async with gateway(seen, rate_limit_enabled=True, rate_limits={"generate-avatar": "1/3600"}) as (port, token):
        target = f"{APP}/projects/p1/avatars/generate"
        first = await exchange(port, get(target.encode(), token, b"POST"))
        disguised = f"{APP}/generations/..{target.removeprefix(APP)}".encode()
        second = await exchange(port, get(disguised, token, b"POST"))
    assert first.status == 200
    assert second.status == 429, (second.status, seen)
    assert seen == [target]
