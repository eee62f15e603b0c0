"""The routed `/api/` paths as one pure-ASGI step: match the route, verify the token, count the rate limits,
compose or forward. FastAPI's routing, dependency solving and endpoint wrapping cost more CPU than the proxying
itself; everything else (health, docs, /media, and paths no service owns, which answer 404) stays in FastAPI.

It sits inside the request-context and CORS middlewares, so ids, access log, default headers and CORS are
the same for every answer; errors answer in the spec's shape, as FastAPI's error handlers would.
"""

from __future__ import annotations

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from lumiku_common.auth import bearer_token, decode_user_token
from lumiku_common.errors import AppError, ServiceUnavailable, error_response, is_unavailable
from lumiku_common.logs import get_logger
from lumiku_common.metrics import ROUTE_LABEL_KEY
from lumiku_gateway.composition import ProjectComposer
from lumiku_gateway.limits import RateLimiter
from lumiku_gateway.proxy import forward, resolved_path
from lumiku_gateway.routes import Route, match
from lumiku_gateway.upstreams import Upstream, Upstreams

log = get_logger(__name__)

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


def _resolve(scope: Scope) -> bool:
    """Gives the scope the path a service would be sent: routes, rate limits and composition must judge that path,
    not the client's (`/api/credits/../../metrics` is forwarded as `/metrics`). False for a path no URL holds."""
    raw_path: bytes | None = scope.get("raw_path")
    try:
        resolved = resolved_path(raw_path) if raw_path else None
    except (httpx.InvalidURL, UnicodeDecodeError):
        return False
    if resolved is not None:
        scope["raw_path"], scope["path"] = resolved
    return True


class PassThrough:
    def __init__(
        self,
        app: ASGIApp,
        jwt_secret: str,
        upstreams: Upstreams,
        limiter: RateLimiter,
        composer: ProjectComposer,
    ):
        self.app, self.jwt_secret = app, jwt_secret
        self.upstreams, self.limiter, self.composer = upstreams, limiter, composer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = upstream = None
        if scope["type"] == "http" and scope["method"] in METHODS and not _resolve(scope):
            await error_response(400, {"error": "Invalid request path"})(scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] in METHODS and scope["path"].startswith("/api/"):
            route = match(scope["path"])
            upstream = self.upstreams.get(route.service) if route else None
        if route is None or upstream is None:
            await self.app(scope, receive, send)  # not routed: FastAPI answers (404 in the error shape)
            return
        scope[ROUTE_LABEL_KEY] = route.template  # metrics count per route, not per path
        request = Request(scope, receive)
        try:
            response = await self._respond(request, route, upstream)
        except AppError as exc:
            response = error_response(exc.status_code, exc.body(), exc.headers)
        except Exception as exc:
            if not is_unavailable(exc):
                raise  # a bug: the request middleware logs it and answers 500
            log.warning("dependency_unavailable", method=scope["method"], path=scope["path"], error=repr(exc)[:500])
            unavailable = ServiceUnavailable()
            response = error_response(unavailable.status_code, unavailable.body(), unavailable.headers)
        await response(scope, receive, send)

    async def _respond(self, request: Request, route: Route, upstream: Upstream) -> Response:
        if route.authenticated:
            # Verified here so bad tokens never reach a service; services verify again (defence in depth).
            user = decode_user_token(bearer_token(request), self.jwt_secret)
            await self.limiter.check(user.id, request.method, request.scope["path"])
            if self.composer.applies(request):
                return await self.composer.respond(upstream, request, user)
        return await forward(upstream, request)
