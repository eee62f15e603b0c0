"""Calls to other services' `/internal/` routes: service token, correlation ids, pooled connections.

How another service's failure reaches our caller (the spec: a dependency that is down is 503 with
`Retry-After`, an upstream that failed 502, one that timed out 504):
- no connection (refused, reset before an answer, pool exhausted): 503 with `Retry-After`;
- no answer in time: 504;
- an answer the contract does not allow (a 5xx, a 4xx our own request caused, a body we cannot read): 502,
  logged as an error, since it is a bug or a misconfiguration on one side, never the client's fault;
- the other service saying it is down or overloaded (503, 504, 429): 503 with its `Retry-After`.
"""

from __future__ import annotations

from typing import Any

import httpx

from lumiku_common.auth import SERVICE_TOKEN_HEADER, ServiceTokens
from lumiku_common.context import context_headers
from lumiku_common.errors import AppError, ServiceUnavailable
from lumiku_common.http_transport import AiohttpTransport
from lumiku_common.logs import get_logger

log = get_logger(__name__)


class UpstreamUnavailable(ServiceUnavailable):
    def __init__(self, retry_after: str | None = None):
        """`retry_after`: the upstream's own Retry-After, passed on when it is a number of seconds."""
        super().__init__(retry_after=int(retry_after) if retry_after and retry_after.isdigit() else None)


class BadGateway(AppError):
    status_code = 502
    message = "Bad gateway"


class GatewayTimeout(AppError):
    status_code = 504
    message = "Gateway timeout"


def unexpected(response: httpx.Response) -> AppError:
    """The error for a status the contract does not list."""
    where = {"url": str(response.request.url.copy_with(query=None)), "status": response.status_code}
    if response.status_code in (429, 503, 504):
        log.warning("upstream_unavailable", **where)
        return UpstreamUnavailable(response.headers.get("retry-after"))
    log.error("upstream_unexpected_status", **where, body=response.text[:500])
    return BadGateway()


class InternalClient:
    """Sends straight through the transport: httpx's client layers (URL merging, cookies, auth, redirects, event
    hooks) cost about as much CPU as the exchange itself, and a call between services needs none of them."""

    def __init__(
        self,
        base_url: str,
        tokens: ServiceTokens,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.transport = transport or AiohttpTransport()
        self.timeout = httpx.Timeout(timeout).as_dict()
        self.tokens = tokens

    def _headers(self) -> dict[str, str]:
        return {SERVICE_TOKEN_HEADER: self.tokens.token(), **context_headers()}

    async def request(
        self, method: str, path: str, *, params: dict[str, str] | None = None, json: Any = None
    ) -> httpx.Response:
        url = f"{self.base_url}{path}"
        request = httpx.Request(
            method, url, params=params, json=json, headers=self._headers(), extensions={"timeout": self.timeout}
        )
        try:
            response = await self.transport.handle_async_request(request)
            response.request = request
            try:
                await response.aread()
            finally:
                await response.aclose()
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            log.warning("upstream_unreachable", url=url, error=repr(exc))
            raise UpstreamUnavailable() from exc
        except httpx.TimeoutException as exc:  # it took the request and did not answer in time
            log.warning("upstream_timeout", url=url, error=repr(exc))
            raise GatewayTimeout() from exc
        except httpx.TransportError as exc:  # the link broke mid-exchange (reset, garbled reply)
            log.warning("upstream_broken", url=url, error=repr(exc))
            raise UpstreamUnavailable() from exc
        return response

    async def aclose(self) -> None:
        await self.transport.aclose()
