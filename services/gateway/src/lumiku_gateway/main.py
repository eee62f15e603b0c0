"""The API gateway: verifies JWTs, routes every public path to its service, aggregates health and docs."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from redis.asyncio import Redis
from starlette.middleware import Middleware
from starlette.responses import Response

from lumiku_common.auth import ServiceTokens
from lumiku_common.clients.avatars import AvatarsClient
from lumiku_common.errors import RETRY_LATER, NotFound
from lumiku_common.internal import InternalClient
from lumiku_common.media import MediaSigner
from lumiku_common.messaging import asyncapi
from lumiku_common.routing import Router
from lumiku_common.schemas import iso_utc
from lumiku_common.service import ServiceSpec, create_service
from lumiku_common.storage import storage_from
from lumiku_gateway import media
from lumiku_gateway.composition import ProjectComposer
from lumiku_gateway.cors import CorsMiddleware
from lumiku_gateway.dependencies import Media, OpenAPIDep, UpstreamsDep
from lumiku_gateway.limits import RateLimiter
from lumiku_gateway.openapi import SuiteOpenAPI
from lumiku_gateway.passthrough import PassThrough
from lumiku_gateway.settings import GatewaySettings
from lumiku_gateway.upstreams import Upstreams


def _router(settings: GatewaySettings) -> APIRouter:
    router = Router()
    started = time.monotonic()

    @router.get("/api/health", tags=["health"])
    async def suite_health(upstreams: UpstreamsDep) -> JSONResponse:
        services = await upstreams.readiness()
        healthy = all(v == "ok" for v in services.values())
        body = {
            "status": "healthy" if healthy else "degraded",
            "version": settings.version,
            "uptime": int(time.monotonic() - started),
            # Each service reports its own database in its readiness; all ready means all connected.
            "database": "connected" if healthy else "degraded",
            "timestamp": iso_utc(datetime.now(UTC)),
            "services": services,
        }
        return JSONResponse(body) if healthy else JSONResponse(body, 503, RETRY_LATER)

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi(suite_openapi: OpenAPIDep) -> dict[str, Any]:
        return await suite_openapi.document()

    @router.get("/docs/events", include_in_schema=False)
    async def event_docs() -> dict[str, Any]:
        """The event contract (AsyncAPI 3) for apps that publish or consume on the broker, e.g. avatar.used."""
        return asyncapi.document()

    @router.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Lumiku Avatar Creator API")

    @router.api_route("/api/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unrouted() -> Response:
        """Routed paths are answered before FastAPI (lumiku_gateway.passthrough); what reaches here no service owns."""
        raise NotFound()

    return router


def _composer(settings: GatewaySettings, upstreams: Upstreams) -> ProjectComposer:
    avatars, client = upstreams.get("avatars"), None
    if avatars is not None:  # the composition's calls share the avatars route's connection pool
        tokens = ServiceTokens(settings.service_token_secret, "gateway")
        client = AvatarsClient(InternalClient(str(avatars.base_url), tokens, transport=avatars.transport))
    return ProjectComposer(client, settings.avatars_per_project_in_list, settings.avatars_per_project_in_detail)


def _limiter(settings: GatewaySettings) -> RateLimiter:
    enabled = settings.rate_limit_enabled
    redis = Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5) if enabled else None
    return RateLimiter(redis, settings.rate_limits)


def create_app(
    settings: GatewaySettings | None = None, transports: dict[str, httpx.AsyncBaseTransport] | None = None
) -> FastAPI:
    settings = settings or GatewaySettings()
    upstreams, limiter = Upstreams(settings, transports), _limiter(settings)
    composer = _composer(settings, upstreams)
    signer = MediaSigner(settings.media_url_secret, settings.media_url_ttl_seconds)
    media_parts = Media(storage_from(settings), signer)
    suite_openapi = SuiteOpenAPI(upstreams, "Lumiku Avatar Creator", settings.version)

    async def shutdown(_: FastAPI) -> None:
        await upstreams.aclose()
        if limiter.redis is not None:
            await limiter.redis.aclose()
        await media_parts.storage.close()

    async def readiness(_: FastAPI) -> dict[str, str]:
        return await upstreams.readiness()

    app = create_service(
        ServiceSpec(
            settings=settings,
            routers=[_router(settings), media.router],
            stateless=True,
            public=True,  # its metrics are served on METRICS_PORT only, never on the public port
            readiness=readiness,
            on_shutdown=[shutdown],
            title="Lumiku gateway",
            own_docs=False,
            parts=[upstreams, limiter, composer, media_parts, suite_openapi],
            middleware=[Middleware(PassThrough, settings.jwt_secret, upstreams, limiter, composer)],
        )
    )
    app.add_middleware(CorsMiddleware, origins=settings.cors_origins)  # outermost: errors carry CORS too
    return app
