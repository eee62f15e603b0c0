"""What the gateway's routes need, as typed dependencies (tests swap them with `dependency_overrides`).

Each is built once by `create_app` and kept on the app; these providers are the only readers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from lumiku_common.media import MediaSigner
from lumiku_common.storage import Storage
from lumiku_gateway.composition import ProjectComposer
from lumiku_gateway.limits import RateLimiter
from lumiku_gateway.openapi import SuiteOpenAPI
from lumiku_gateway.upstreams import Upstreams


@dataclass(frozen=True)
class Media:
    storage: Storage
    signer: MediaSigner


@dataclass(frozen=True)
class Gateway:
    upstreams: Upstreams
    openapi: SuiteOpenAPI
    composer: ProjectComposer
    limiter: RateLimiter | None  # None when rate limits are off
    media: Media


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _upstreams(gateway: Annotated[Gateway, Depends(_gateway)]) -> Upstreams:
    return gateway.upstreams


def _media(gateway: Annotated[Gateway, Depends(_gateway)]) -> Media:
    return gateway.media


GatewayDep = Annotated[Gateway, Depends(_gateway)]
UpstreamsDep = Annotated[Upstreams, Depends(_upstreams)]
MediaDep = Annotated[Media, Depends(_media)]
