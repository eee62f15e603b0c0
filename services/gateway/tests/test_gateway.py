"""The gateway on its own: routing table, auth before forwarding, upstream failures, health and docs."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lumiku_common.http_server import LimitedHttpToolsProtocol
from lumiku_devtools.testing import RUN_ID, auth, free_port, running, settings_for_tests
from lumiku_gateway.main import create_app
from lumiku_gateway.routes import match
from lumiku_gateway.settings import GatewaySettings
from lumiku_gateway.upstreams import READINESS_FRESH_SECONDS

APP = "/api/apps/avatar-creator"


@pytest.mark.parametrize(
    ("path", "service"),
    [
        (f"{APP}/projects", "projects"),
        (f"{APP}/projects/p1", "projects"),
        (f"{APP}/projects/p1/avatars", "avatars"),
        (f"{APP}/projects/p1/avatars/save-preview", "avatars"),
        (f"{APP}/projects/p1/avatars/generate", "generation"),
        (f"{APP}/projects/p1/avatars/generate-preview", "generation"),
        (f"{APP}/avatars", "avatars"),
        (f"{APP}/avatars/a1", "avatars"),
        (f"{APP}/avatars/a1/usage-history", "usage"),
        (f"{APP}/track-usage", "usage"),
        (f"{APP}/stats", "avatars"),
        ("/api/credits/balance", "credits"),
        (f"{APP}/projects/p1/avatars/x/y", None),
        (f"{APP}/unknown", None),
        ("/internal/projects/p1", None),
    ],
)
def test_routing_table(path, service):
    route = match(path)
    assert (route.service if route else None) == service


def echo_app() -> FastAPI:
    """An upstream that shows what it received."""
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def echo(request: Request, path: str) -> dict:
        body = await request.body()
        return {"path": "/" + path, "query": request.url.query, "headers": dict(request.headers), "size": len(body)}

    return app


@contextlib.asynccontextmanager
async def gateway(service_urls: dict[str, str], transports=None, **overrides) -> AsyncIterator[httpx.AsyncClient]:
    overrides.setdefault("rate_limit_enabled", False)
    settings = settings_for_tests(GatewaySettings, service_urls=service_urls, **overrides)
    async with running(create_app(settings, transports)) as client:
        client.headers.update(auth(settings, "alice"))
        yield client


async def test_forwards_path_query_body_and_context_headers():
    transports = {"avatars": httpx.ASGITransport(app=echo_app())}
    async with gateway({"avatars": "http://avatars"}, transports) as api:
        response = await api.post(
            f"{APP}/avatars", params={"page": "2"}, content=b"x" * 100_000, headers={"x-request-id": "req-1"}
        )
    seen = response.json()
    assert seen["path"] == f"{APP}/avatars" and seen["query"] == "page=2" and seen["size"] == 100_000
    assert seen["headers"]["x-request-id"] == "req-1"
    assert seen["headers"]["authorization"].startswith("Bearer ")
    assert seen["headers"]["traceparent"].startswith("00-")
    assert response.headers["x-request-id"] == "req-1"


async def test_bad_tokens_never_reach_the_service():
    calls = []
    app = echo_app()

    @app.middleware("http")
    async def count(request, call_next):
        calls.append(request.url.path)
        return await call_next(request)

    async with gateway({"projects": "http://projects"}, {"projects": httpx.ASGITransport(app=app)}) as api:
        missing = await api.get(f"{APP}/projects", headers={"Authorization": ""})
        invalid = await api.get(f"{APP}/projects", headers={"Authorization": "Bearer nope"})
        # Validly signed, but a user id no table can hold (over 128 characters, NUL): 401, not the 500 it was.
        settings = settings_for_tests(GatewaySettings)
        unusable = [await api.get(f"{APP}/projects", headers=auth(settings, uid)) for uid in ("u" * 129, "a\x00b")]
    assert (missing.status_code, missing.json()) == (401, {"error": "Unauthorized"})
    assert (invalid.status_code, invalid.json()) == (401, {"error": "Invalid token"})
    for response in (invalid, *unusable):
        assert (response.status_code, response.headers["www-authenticate"]) == (401, "Bearer")
    assert calls == []


async def test_unknown_and_undeployed_paths_are_404():
    async with gateway({"projects": "http://127.0.0.1:9"}) as api:
        for path in (f"{APP}/nothing-here", "/api/credits/balance", "/internal/projects/x"):
            response = await api.get(path)
            assert (response.status_code, response.json()) == (404, {"error": "Not found"}), path


async def test_upstream_down_is_503():
    async with gateway({"projects": "http://127.0.0.1:9"}) as api:
        response = await api.get(f"{APP}/projects")
    assert (response.status_code, response.headers["retry-after"]) == (503, "5")
    assert response.json() == {"error": "Service unavailable", "service": "projects"}


@contextlib.asynccontextmanager
async def raw_server(reply: bytes | None) -> AsyncIterator[int]:
    """A TCP server that answers every connection with `reply` (or never answers)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        if reply is None:
            await asyncio.sleep(30)
        else:
            writer.write(reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_upstream_timeout_is_504():
    async with raw_server(None) as port, gateway({"projects": f"http://127.0.0.1:{port}"}, upstream_timeout=0.5) as api:
        response = await api.get(f"{APP}/projects")
    assert response.status_code == 504
    assert response.json()["error"] == "Upstream service timed out"


async def test_upstream_garbage_is_502():
    async with raw_server(b"garbage\r\n\r\n") as port, gateway({"projects": f"http://127.0.0.1:{port}"}) as api:
        response = await api.get(f"{APP}/projects")
    assert (response.status_code, response.json()["error"]) == (502, "Bad gateway")


async def test_suite_health_reports_each_service():
    transports = {"projects": httpx.ASGITransport(app=_ready_app(200))}
    async with gateway({"projects": "http://projects", "credits": "http://127.0.0.1:9"}, transports) as api:
        response = await api.get("/api/health", headers={"Authorization": ""})
    body = response.json()
    assert (response.status_code, response.headers["retry-after"]) == (503, "5")
    assert body["status"] == "degraded" and body["services"] == {"projects": "ok", "credits": "unavailable"}
    assert set(body) == {"status", "version", "uptime", "database", "timestamp", "services"}


async def test_suite_health_healthy_and_own_probes():
    transports = {"projects": httpx.ASGITransport(app=_ready_app(200))}
    async with gateway({"projects": "http://projects"}, transports) as api:
        health = await api.get("/api/health")
        assert (health.status_code, health.json()["status"], health.json()["database"]) == (200, "healthy", "connected")
        assert (await api.get("/health")).json()["status"] == "ok"
        assert (await api.get("/ready")).status_code == 200


def _ready_app(status: int) -> FastAPI:
    app = FastAPI(openapi_url=None)  # serves the hand-written document below instead

    @app.get("/ready")
    async def ready() -> dict:
        if status != 200:
            raise RuntimeError
        return {"status": "ready"}

    @app.get("/openapi.json")
    async def spec() -> dict:
        return {"paths": {f"{APP}/projects": {"get": {}}, "/internal/x": {"get": {}}}, "components": {}}

    return app


async def test_docs_merge_public_paths_only():
    transports = {"projects": httpx.ASGITransport(app=_ready_app(200))}
    async with gateway({"projects": "http://projects", "credits": "http://127.0.0.1:9"}, transports) as api:
        doc = (await api.get("/openapi.json")).json()
        page = await api.get("/docs")
    assert list(doc["paths"]) == [f"{APP}/projects"]
    assert "credits" in doc["info"]["description"]
    assert page.status_code == 200 and "swagger" in page.text.lower()


async def test_rate_limits_answer_429_with_retry_after_per_user():
    transports = {"projects": httpx.ASGITransport(app=echo_app())}
    limits = {"api": "1000/60", "create-project": "3/3600"}
    user = f"limited-{RUN_ID}"
    async with gateway({"projects": "http://projects"}, transports, rate_limit_enabled=True, rate_limits=limits) as api:
        settings = settings_for_tests(GatewaySettings)
        headers = auth(settings, user)
        statuses = [(await api.post(f"{APP}/projects", json={}, headers=headers)).status_code for _ in range(5)]
        limited = await api.post(f"{APP}/projects", json={}, headers=headers)
        other_user = await api.post(f"{APP}/projects", json={}, headers=auth(settings, f"{user}-2"))
        reads = await api.get(f"{APP}/projects", headers=headers)
    assert statuses == [200, 200, 200, 429, 429]
    assert limited.json()["error"] == "Too many requests"
    assert 1 <= int(limited.headers["retry-after"]) <= 3600
    assert other_user.status_code == 200 and reads.status_code == 200


async def test_concurrent_requests_counted_together_are_each_counted_exactly():
    """Requests that arrive while a count is in flight share the next Redis call: still one count each, so
    exactly the limit passes, shared by two gateways (two processes' worth of limiters on one Redis)."""
    transports = {"projects": httpx.ASGITransport(app=echo_app())}
    limits = {"api": "1000/60", "create-project": "7/3600"}
    user = f"burst-{RUN_ID}"
    async with (
        gateway({"projects": "http://projects"}, transports, rate_limit_enabled=True, rate_limits=limits) as one,
        gateway({"projects": "http://projects"}, transports, rate_limit_enabled=True, rate_limits=limits) as two,
    ):
        headers = auth(settings_for_tests(GatewaySettings), user)
        burst = [api.post(f"{APP}/projects", json={}, headers=headers) for api in (one, two) for _ in range(10)]
        statuses = Counter(response.status_code for response in await asyncio.gather(*burst))
    assert statuses == {200: 7, 429: 13}


async def test_save_preview_counts_against_the_upload_limit():
    """Both create an avatar: after the upload limit is reached, save-preview is refused too, and vice versa."""
    transports = {"avatars": httpx.ASGITransport(app=echo_app())}
    limits = {"api": "1000/60", "upload-avatar": "2/3600"}
    user = f"previews-{RUN_ID}"
    async with gateway({"avatars": "http://avatars"}, transports, rate_limit_enabled=True, rate_limits=limits) as api:
        headers = auth(settings_for_tests(GatewaySettings), user)
        upload = await api.post(f"{APP}/projects/p1/avatars", content=b"x", headers=headers)
        preview = await api.post(f"{APP}/projects/p1/avatars/save-preview", json={}, headers=headers)
        refused = await api.post(f"{APP}/projects/p1/avatars/save-preview", json={}, headers=headers)
        refused_upload = await api.post(f"{APP}/projects/p1/avatars", content=b"x", headers=headers)
    assert (upload.status_code, preview.status_code) == (200, 200)
    assert (refused.status_code, refused_upload.status_code) == (429, 429)


async def test_rate_limits_fail_open_without_redis():
    transports = {"projects": httpx.ASGITransport(app=echo_app())}
    async with gateway(
        {"projects": "http://projects"},
        transports,
        rate_limit_enabled=True,
        rate_limits={"api": "1/60"},
        redis_url="redis://127.0.0.1:9/0",
    ) as api:
        statuses = [(await api.get(f"{APP}/projects")).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]


async def test_one_users_cookies_never_reach_another_users_request():
    app = echo_app()

    @app.middleware("http")
    async def set_cookie(request, call_next):
        response = await call_next(request)
        response.set_cookie("session", "alice-secret")
        return response

    async with gateway({"avatars": "http://avatars"}, {"avatars": httpx.ASGITransport(app=app)}) as api:
        first = await api.get(f"{APP}/avatars")
        api.cookies.clear()  # the second caller has no cookies of its own
        second = await api.get(f"{APP}/avatars")
    assert "alice-secret" in first.headers["set-cookie"]  # the caller gets its own cookie back
    assert "cookie" not in second.json()["headers"]


@contextlib.asynccontextmanager
async def avatars_upstream(app: FastAPI, real: bool) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in front of `app` as the avatars service: in process, or served on a real socket and
    reached through the gateway's own pool (lumiku_common.http_transport)."""
    if not real:
        async with gateway({"avatars": "http://avatars"}, {"avatars": httpx.ASGITransport(app=app)}) as api:
            yield api
        return
    async with served(app) as url, gateway({"avatars": url}) as api:
        yield api


@pytest.mark.parametrize("real", [False, True], ids=["in-process", "pooled"])
@pytest.mark.parametrize("size", [1_000, 1_000_000])  # buffered and streamed responses
async def test_encoded_bodies_pass_through_untouched(size, real):
    """Small answers come back buffered (Content-Length), large ones streamed (chunked): either way the gzip
    bytes are the upstream's, untouched."""
    from starlette.middleware.gzip import GZipMiddleware

    app = FastAPI()
    app.add_middleware(GZipMiddleware, minimum_size=0)
    body = json.dumps({"data": "x" * size}).encode()

    @app.get(f"{APP}/avatars")
    async def big() -> Response:
        if size < 100_000:
            return Response(body, media_type="application/json")
        pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))
        return StreamingResponse(_aiter(pieces), media_type="application/json")  # gzip streams it on

    async with (
        avatars_upstream(app, real) as api,
        api.stream("GET", f"{APP}/avatars", headers={"accept-encoding": "gzip"}) as response,
    ):
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    assert ("content-length" in response.headers) == (size < 100_000)
    assert gzip.decompress(raw) == body


async def _aiter(items):
    for item in items:
        yield item


@pytest.mark.parametrize("real", [False, True], ids=["in-process", "pooled"])
async def test_an_early_413_stops_the_gateway_reading_the_upload(real):
    """The avatars service refuses an oversized body part-way; the gateway must not read the rest."""
    upstream = FastAPI()

    @upstream.post(f"{APP}/projects/p/avatars")
    async def refuse_after_a_megabyte(request: Request):
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > 1_000_000:
                return JSONResponse({"error": "File too large (max 10MB)"}, status_code=413)
        return {"received": received}

    sent = 0

    async def fifty_megabytes():
        nonlocal sent
        for _ in range(800):
            sent += 65536
            yield b"x" * 65536

    async with avatars_upstream(upstream, real) as api:
        response = await api.post(f"{APP}/projects/p/avatars", content=fifty_megabytes())
    assert (response.status_code, response.json()["error"]) == (413, "File too large (max 10MB)")
    # Over a socket, what the kernel's buffers took (both ways, ~10 MB at most on loopback) had gone already.
    assert sent < (16_000_000 if real else 2_000_000)


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """`app` behind a real uvicorn on a free port: the gateway reaches it through its real pooled client,
    which (unlike an in-process transport) refuses malformed headers, and gets uvicorn's Date/Server."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", http=LimitedHttpToolsProtocol)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize("path", [f"{APP}/avatars", f"{APP}/projects"])  # forwarded, and composed
async def test_header_whitespace_is_trimmed_and_control_characters_dropped(path):
    async with served(echo_app()) as url, gateway({"avatars": url, "projects": url}) as api:
        response = await api.get(
            path,
            headers={"Accept-Language": "en ", "User-Agent": " quirky\t", "Accept": "a\x00b", "If-Match": "x\ry"},
        )
    assert response.status_code == 200, response.text
    seen = response.json()["headers"]
    assert (seen["accept-language"], seen["user-agent"]) == ("en", "quirky")
    assert "accept" not in seen and "if-match" not in seen


async def test_only_allowlisted_request_headers_reach_a_service():
    async with served(echo_app()) as url, gateway({"avatars": url}) as api:
        response = await api.post(
            f"{APP}/avatars",
            content=b"{}",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": "k-1",
                "Cookie": "session=secret",
                "X-Service-Token": "forged",
                "X-Forwarded-For": "6.6.6.6",
                "X-Custom": "1",
                "Connection": "keep-alive, X-Custom",
            },
        )
    seen = response.json()["headers"]
    assert seen["content-type"] == "application/json" and seen["idempotency-key"] == "k-1"
    assert seen["content-length"] == "2" and response.json()["size"] == 2
    assert seen["x-forwarded-for"] == "127.0.0.1"  # the gateway's peer, never what the client claims
    assert not {"cookie", "x-service-token", "x-custom"} & set(seen)
    assert seen["host"] == url.removeprefix("http://")  # the upstream's, not the client's


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_a_body_on_get_or_delete_is_dropped_not_forwarded(method):
    async with served(echo_app()) as url, gateway({"avatars": url}) as api:
        response = await api.request(method, f"{APP}/avatars/a1", content=b"x" * 1000)
    assert response.status_code == 200, response.text
    seen = response.json()
    # Nothing of the body goes on (a DELETE may go with `Content-Length: 0`, which says the same).
    assert seen["size"] == 0 and seen["headers"].get("content-length", "0") == "0"


async def test_proxied_responses_carry_one_date_and_no_upstream_server():
    async with served(echo_app()) as url, gateway({"avatars": url}) as api:
        response = await api.get(f"{APP}/avatars")
    # In-process the gateway has no server of its own to add them: any Date/Server here came from upstream.
    assert "date" not in response.headers and "server" not in response.headers


def counting_echo() -> tuple[FastAPI, list[str]]:
    app, calls = echo_app(), []

    @app.middleware("http")
    async def count(request, call_next):
        calls.append(request.url.path)
        return await call_next(request)

    return app, calls


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (f"{APP}/projects/%00", "Invalid request path"),
        (f"{APP}/avatars/a%00b", "Invalid request path"),
        (f"{APP}/avatars/a%0Ab", "Invalid request path"),
        (f"{APP}/avatars/%C3%28", "Invalid request path"),  # not UTF-8
        (f"{APP}/avatars/%zz", "Invalid request path"),
        (f"{APP}/avatars/50%", "Invalid request path"),
        (f"{APP}/avatars?search=%00", "Invalid query string"),
        (f"{APP}/avatars?projectId=%00", "Invalid query string"),
        (f"{APP}/avatars?search=%FF", "Invalid query string"),
        (f"{APP}/avatars?search=%G1", "Invalid query string"),
        (f"{APP}/avatars?search=a%7Fb", "Invalid query string"),
    ],
)
async def test_junk_in_path_or_query_is_400_before_any_route(target, error):
    app, calls = counting_echo()
    transports = {name: httpx.ASGITransport(app=app) for name in ("projects", "avatars")}
    async with gateway({"projects": "http://projects", "avatars": "http://avatars"}, transports) as api:
        response = await api.get(target)
    assert (response.status_code, response.json()) == (400, {"error": error})
    assert calls == []


async def test_clean_unicode_and_escapes_pass():
    app, calls = counting_echo()
    async with gateway({"avatars": "http://avatars"}, {"avatars": httpx.ASGITransport(app=app)}) as api:
        response = await api.get(f"{APP}/avatars?search=caf%C3%A9+%26+%E2%9C%93%09")
        tab_free = await api.get(f"{APP}/avatars?search=caf%C3%A9+%26+%E2%9C%93")
    assert response.status_code == 400  # a tab is a control character too
    assert tab_free.status_code == 200 and calls == [f"{APP}/avatars"]


def _security_headers(response: httpx.Response) -> tuple[str, str]:
    return response.headers.get("cache-control", ""), response.headers.get("x-content-type-options", "")


async def test_api_answers_and_docs_are_no_store_and_nosniff():
    transports = {"projects": httpx.ASGITransport(app=_ready_app(200)), "avatars": httpx.ASGITransport(app=echo_app())}
    async with gateway({"projects": "http://projects", "avatars": "http://avatars"}, transports) as api:
        answers = [
            await api.get(f"{APP}/avatars"),  # proxied
            await api.get(f"{APP}/avatars", headers={"Authorization": ""}),  # the gateway's own 401
            await api.get(f"{APP}/nowhere"),
            await api.get("/docs"),
            await api.get("/api/health"),
        ]
    for response in answers:
        assert _security_headers(response) == ("no-store", "nosniff"), response.request.url
        assert len(response.headers.get_list("cache-control")) == 1


async def test_a_response_with_its_own_caching_keeps_it():
    app = FastAPI()

    @app.get(f"{APP}/avatars")
    async def cached() -> JSONResponse:
        return JSONResponse({}, headers={"Cache-Control": "private, max-age=60"})

    async with gateway({"avatars": "http://avatars"}, {"avatars": httpx.ASGITransport(app=app)}) as api:
        response = await api.get(f"{APP}/avatars")
    assert response.headers.get_list("cache-control") == ["private, max-age=60"]


@pytest.mark.parametrize("authorization", ["", "Bearer nope", "Basic abc"])
async def test_401_names_the_bearer_scheme(authorization):
    async with gateway({"avatars": "http://127.0.0.1:9"}) as api:
        response = await api.get(f"{APP}/avatars", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers.get_list("www-authenticate") == ["Bearer"]


ORIGIN = "https://app.lumiku.test"


def cors_upstream() -> FastAPI:
    app = echo_app()

    @app.middleware("http")
    async def careless_cors(request, call_next):  # a service must never decide CORS for the suite
        response = await call_next(request)
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    return app


async def test_cors_only_for_listed_origins_with_credentials():
    transports = {"avatars": httpx.ASGITransport(app=cors_upstream())}
    async with gateway({"avatars": "http://avatars"}, transports, cors_origins=[ORIGIN]) as api:
        listed = await api.get(f"{APP}/avatars", headers={"Origin": ORIGIN})
        unlisted = await api.get(f"{APP}/avatars", headers={"Origin": "https://evil.test"})
        error = await api.get(f"{APP}/avatars", headers={"Origin": ORIGIN, "Authorization": ""})
    assert listed.headers.get_list("access-control-allow-origin") == [ORIGIN]
    assert listed.headers["access-control-allow-credentials"] == "true"
    exposed = {h.strip().lower() for h in listed.headers["access-control-expose-headers"].split(",")}
    assert {"retry-after", "location", "idempotent-replayed", "x-request-id"} <= exposed
    assert "access-control-allow-origin" not in unlisted.headers
    assert "access-control-allow-credentials" not in unlisted.headers
    assert "origin" in unlisted.headers["vary"].lower()
    assert error.status_code == 401 and error.headers["access-control-allow-origin"] == ORIGIN


async def test_no_cors_by_default():
    transports = {"avatars": httpx.ASGITransport(app=cors_upstream())}
    async with gateway({"avatars": "http://avatars"}, transports) as api:
        response = await api.get(f"{APP}/avatars", headers={"Origin": ORIGIN})
        preflight = await api.options(
            f"{APP}/avatars", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )
    assert not [k for k in response.headers if k.startswith("access-control-")]
    assert (preflight.status_code, preflight.json()) == (403, {"error": "Origin not allowed"})


async def test_preflight_is_answered_by_the_gateway():
    app, calls = counting_echo()
    async with gateway(
        {"avatars": "http://avatars"}, {"avatars": httpx.ASGITransport(app=app)}, cors_origins=[ORIGIN]
    ) as api:
        preflight = await api.options(
            f"{APP}/avatars",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
                "Authorization": "",  # browsers send no credentials with a preflight
            },
        )
    assert preflight.status_code == 204 and calls == []
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    # What the API reads: async generate (Prefer), resuming its stream (Last-Event-ID), retried writes.
    assert {"authorization", "content-type", "prefer", "last-event-id", "idempotency-key"} <= {
        h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")
    }


async def test_suite_health_asks_each_service_at_most_once_a_second():
    """`/api/health` needs no token: however often it is asked, each gateway process asks the services at most
    once a second, and whoever asks meanwhile shares that answer (a flood of health checks must not become five
    readiness checks, each with its database round trip, per request)."""
    asked = Counter[str]()
    app = FastAPI()

    @app.get("/ready")
    async def ready() -> dict:
        asked["ready"] += 1
        await asyncio.sleep(0.05)
        return {"status": "ready"}

    async with gateway({"projects": "http://projects"}, {"projects": httpx.ASGITransport(app=app)}) as api:
        answers = await asyncio.gather(*(api.get("/api/health") for _ in range(20)))
        answers.append(await api.get("/api/health"))
        assert asked["ready"] == 1
        await asyncio.sleep(READINESS_FRESH_SECONDS)
        answers.append(await api.get("/api/health"))
    assert asked["ready"] == 2
    assert all(a.status_code == 200 and a.json()["services"] == {"projects": "ok"} for a in answers)
