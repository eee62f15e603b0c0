"""Calls to other services' `/internal/` routes: service token, correlation ids, pooled connections."""

from __future__ import annotations

from typing import Any

import httpx

from lumiku_common.auth import SERVICE_TOKEN_HEADER, ServiceTokens
from lumiku_common.context import context_headers
from lumiku_common.errors import ServiceUnavailable


class InternalClient:
    def __init__(
        self,
        base_url: str,
        tokens: ServiceTokens,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        self.tokens = tokens

    def _headers(self) -> dict[str, str]:
        return {SERVICE_TOKEN_HEADER: self.tokens.token(), **context_headers()}

    async def request(
        self, method: str, path: str, *, params: dict[str, str] | None = None, json: Any = None
    ) -> httpx.Response:
        try:
            return await self.http.request(method, path, headers=self._headers(), params=params, json=json)
        except httpx.TransportError as exc:
            raise ServiceUnavailable() from exc

    async def aclose(self) -> None:
        await self.http.aclose()
