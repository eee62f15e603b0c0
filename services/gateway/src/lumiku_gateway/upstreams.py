"""One connection pool per upstream service."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from lumiku_common.http_transport import Exchange, Http1Transport, lean
from lumiku_gateway.settings import GatewaySettings

# `/api/health` is public and each answer asks every service: the services are asked at most this often per
# gateway process, and all who ask meanwhile share that answer.
READINESS_FRESH_SECONDS = 1.0


@dataclass(frozen=True)
class Upstream:
    name: str
    base_url: httpx.URL
    origin: str  # scheme://host:port, to which the proxy path appends a request's path and query
    transport: httpx.AsyncBaseTransport
    # The proxy path sends straight through the pool: no client-level cookies, redirects or auth to pay for,
    # and no httpx objects to build.
    exchange: Exchange
    timeout: dict[str, Any]
    # The gateway's own calls (readiness, docs) use a client over the same pool; composition an InternalClient.
    client: httpx.AsyncClient


def _no_cookies() -> httpx.Cookies:
    # A shared client must never keep one user's Set-Cookie and send it with another user's request.
    return httpx.Cookies(CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])))


class Upstreams:
    def __init__(self, settings: GatewaySettings, transports: dict[str, httpx.AsyncBaseTransport] | None = None):
        timeout = httpx.Timeout(settings.upstream_timeout, connect=settings.upstream_connect_timeout)
        self.upstreams: dict[str, Upstream] = {}
        for name, url in settings.service_urls.items():
            transport = (transports or {}).get(name) or Http1Transport(max_connections=200)
            client = httpx.AsyncClient(base_url=url, timeout=timeout, transport=transport, cookies=_no_cookies())
            base = httpx.URL(url)
            origin = str(base.copy_with(raw_path=b"", fragment=None))
            self.upstreams[name] = Upstream(name, base, origin, transport, lean(transport), timeout.as_dict(), client)
        self.clients = {name: u.client for name, u in self.upstreams.items()}
        self._readiness: tuple[float, asyncio.Future[dict[str, str]]] | None = None

    def get(self, service: str) -> Upstream | None:
        return self.upstreams.get(service)

    async def readiness(self) -> dict[str, str]:
        """Each service's readiness ("ok", "not_ready", "unavailable"), at most READINESS_FRESH_SECONDS old."""
        now = time.monotonic()
        if self._readiness is None or now - self._readiness[0] >= READINESS_FRESH_SECONDS:
            self._readiness = (now, asyncio.ensure_future(self._ask_readiness()))
        return dict(await asyncio.shield(self._readiness[1]))  # one asker leaving does not cancel the others'

    async def _ask_readiness(self) -> dict[str, str]:
        async def check(client: httpx.AsyncClient) -> str:
            try:
                response = await client.get("/ready", timeout=2.0)
            except httpx.HTTPError:
                return "unavailable"
            return "ok" if response.status_code == 200 else "not_ready"

        names = list(self.clients)
        results = await asyncio.gather(*(check(self.clients[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients.values()))
