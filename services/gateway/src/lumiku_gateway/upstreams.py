"""One pooled HTTP client per upstream service."""

from __future__ import annotations

import asyncio

import httpx

from lumiku_gateway.settings import GatewaySettings


class Upstreams:
    def __init__(self, settings: GatewaySettings, transports: dict[str, httpx.AsyncBaseTransport] | None = None):
        timeout = httpx.Timeout(settings.upstream_timeout, connect=settings.upstream_connect_timeout)
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        transports = transports or {}
        self.clients = {
            name: httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, transport=transports.get(name))
            for name, url in settings.service_urls.items()
        }

    def get(self, service: str) -> httpx.AsyncClient | None:
        return self.clients.get(service)

    async def readiness(self) -> dict[str, str]:
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
