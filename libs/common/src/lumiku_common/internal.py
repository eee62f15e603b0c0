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

import json as jsonlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import httpx
import pydantic_core

from lumiku_common.auth import SERVICE_TOKEN_HEADER, ServiceTokens
from lumiku_common.context import context_headers
from lumiku_common.errors import AppError, ServiceUnavailable
from lumiku_common.http_transport import Http1Transport, lean
from lumiku_common.logs import get_logger

log = get_logger(__name__)

_TOKEN_HEADER = SERVICE_TOKEN_HEADER.lower()  # as httpx sent it


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


@dataclass(slots=True)
class InternalResponse:
    """Another service's answer, read whole."""

    url: str  # what was called, without its query (logs)
    status_code: int
    headers: Mapping[str, str]  # looked up by any case
    content: bytes

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


def unexpected(response: InternalResponse) -> AppError:
    """The error for a status the contract does not list."""
    where = {"url": response.url, "status": response.status_code}
    if response.status_code in (429, 503, 504):
        log.warning("upstream_unavailable", **where)
        return UpstreamUnavailable(response.headers.get("retry-after"))
    log.error("upstream_unexpected_status", **where, body=response.text[:500])
    return BadGateway()


class InternalClient:
    """Sends straight through the transport's exchange: httpx's client layers (URL merging, cookies, auth,
    redirects, event hooks) and objects (requests, responses) cost about as much CPU as the exchange itself, and
    a call between services needs none of them. Paths come percent-encoded (the clients quote what they put in
    them) and go as they are."""

    def __init__(
        self,
        base_url: str,
        tokens: ServiceTokens,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.base_url = str(httpx.URL(base_url.rstrip("/")))  # normalised once, as httpx did on every call
        self.transport = transport or Http1Transport()
        self.timeout = httpx.Timeout(timeout).as_dict()
        self.tokens = tokens

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        return self._transport

    @transport.setter
    def transport(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport, self._exchange = transport, lean(transport)

    def _headers(self) -> list[tuple[str, str]]:
        return [(_TOKEN_HEADER, self.tokens.token()), *context_headers().items()]

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str | int] | None = None, json: Any = None
    ) -> InternalResponse:
        url = f"{self.base_url}{path}"
        headers, body = self._headers(), None
        if json is not None:
            body = pydantic_core.to_json(json)  # compact UTF-8 JSON, as httpx wrote it, in one native pass
            headers.append(("content-type", "application/json"))
        try:
            answer = await self._exchange.exchange(
                method, f"{url}?{query(params)}" if params else url, headers, body, self.timeout
            )
            content = await answer.read()
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            log.warning("upstream_unreachable", url=url, error=repr(exc))
            raise UpstreamUnavailable() from exc
        except httpx.TimeoutException as exc:  # it took the request and did not answer in time
            log.warning("upstream_timeout", url=url, error=repr(exc))
            raise GatewayTimeout() from exc
        except httpx.TransportError as exc:  # the link broke mid-exchange (reset, garbled reply)
            log.warning("upstream_broken", url=url, error=repr(exc))
            raise UpstreamUnavailable() from exc
        return InternalResponse(url, answer.status, answer.headers, content)

    async def aclose(self) -> None:
        await self._exchange.aclose()


# What `urlencode` (and httpx's query params) leave as they are; ASCII text is escaped by one regex pass, three
# times faster than `quote_plus` on a list of ids (whose every comma it escapes, character by character).
_UNSAFE = re.compile(r"[^A-Za-z0-9_.~-]")
_ESCAPED = {chr(c): "+" if c == 0x20 else f"%{c:02X}" for c in range(0x80)}


def _escaped(match: re.Match[str]) -> str:
    return _ESCAPED[match.group()]


def _quoted(value: str | int) -> str:
    text = str(value)
    return _UNSAFE.sub(_escaped, text) if text.isascii() else quote_plus(text)


def query(params: Mapping[str, str | int]) -> str:
    """`params` as a query string, exactly as `urllib.parse.urlencode` (and so httpx) encodes it."""
    return "&".join([f"{_quoted(name)}={_quoted(value)}" for name, value in params.items()])
