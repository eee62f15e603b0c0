"""The shared service defaults, on a minimal service built with create_service."""

from __future__ import annotations

import gc
import json

import pytest
from fastapi import APIRouter, Request

from lumiku_common.service import ServiceSpec, create_service
from lumiku_common.settings import ServiceSettings
from lumiku_devtools.testing import running, settings_for_tests


def broken_service():
    router = APIRouter()

    @router.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("secret internal detail")

    async def always_ready(_):
        return {"self": "ok"}

    settings = settings_for_tests(ServiceSettings, service_name="broken")
    return create_service(ServiceSpec(settings=settings, routers=[router], stateless=True, readiness=always_ready))


@pytest.mark.unhandled_errors
async def test_unknown_errors_are_500_with_the_request_id_and_no_traceback(capsys):
    async with running(broken_service()) as client:
        response = await client.get("/boom", headers={"x-request-id": "req-42"})
    assert response.status_code == 500
    assert response.json() == {"error": "Internal server error", "requestId": "req-42"}
    assert "secret internal detail" not in response.text and "Traceback" not in response.text
    assert response.headers["x-request-id"] == "req-42"
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [error] = [line for line in logged if line["event"] == "unhandled_error"]
    assert error["requestId"] == "req-42" and "secret internal detail" in error["exception"]  # for us, not them


async def test_unknown_routes_and_methods_use_the_error_shape():
    async with running(broken_service()) as client:
        missing = await client.get("/nope")
        wrong = await client.delete("/boom")
        health = await client.get("/health")
        ready = await client.get("/ready")
    assert (missing.status_code, missing.json()) == (404, {"error": "Not found"})
    assert (wrong.status_code, wrong.json()) == (405, {"error": "Method not allowed"})
    assert health.json() == {"status": "ok", "service": "broken", "version": "1.0.0"}
    assert ready.json()["checks"] == {"self": "ok"}


async def test_what_start_up_built_is_out_of_the_collectors_sight_once_a_service_runs():
    async with running(broken_service()) as client:
        assert (await client.get("/health")).status_code == 200
        assert gc.get_freeze_count() > 10_000  # modules, schemas, routes: a full collection scans none of them


async def test_a_request_id_that_could_forge_log_lines_is_replaced():
    async with running(broken_service()) as client:
        response = await client.get("/health", headers={"x-request-id": 'evil"\n{"level":"critical"}'})
    assert response.headers["x-request-id"] != 'evil"\n{"level":"critical"}'
    assert len(response.headers["x-request-id"]) == 26


async def test_ready_is_503_and_names_the_database_while_it_is_unreachable(settings, db):
    """The probe that takes a pod out of rotation: PostgreSQL cut off by a TCP proxy, then back."""
    from lumiku_devtools.testing import TcpProxy

    proxy = await TcpProxy("127.0.0.1", 5432).start()
    through_proxy = settings_for_tests(
        type(settings),
        postgres_url=proxy.url_for(settings.postgres_url),
        database_name=settings.database_name.split("_test_")[0],
        run_workers=False,
    )
    app = create_service(ServiceSpec(settings=through_proxy, routers=[]))
    try:
        async with running(app) as client:
            assert (await client.get("/ready")).status_code == 200
            proxy.cut()
            down = await client.get("/ready")
            assert down.status_code == 503
            assert down.json() == {
                "status": "not_ready",
                "service": "common",
                "checks": {"database": "unavailable", "broker": "ok"},
            }
            assert (await client.get("/health")).status_code == 200  # alive: only readiness fails
            proxy.restore()
            assert (await client.get("/ready")).status_code == 200
    finally:
        await proxy.stop()


def echo_length_service(limit: int):
    router = APIRouter()

    @router.post("/echo")
    async def echo(request: Request) -> dict:
        return {"length": len(await request.body())}

    async def always_ready(_):
        return {"self": "ok"}

    settings = settings_for_tests(ServiceSettings, service_name="echo", max_request_body_bytes=limit)
    return create_service(ServiceSpec(settings=settings, routers=[router], stateless=True, readiness=always_ready))


async def test_a_body_over_the_limit_is_413_declared_or_chunked_and_the_route_never_runs():
    async def chunks(size: int):
        for _ in range(size // 1024):
            yield b"x" * 1024

    async with running(echo_length_service(4096)) as client:
        fits = await client.post("/echo", content=b"x" * 4096)
        declared = await client.post("/echo", content=b"x" * 4097)
        chunked_fits = await client.post("/echo", content=chunks(4096))
        chunked = await client.post("/echo", content=chunks(8192))
    assert (fits.status_code, fits.json()) == (200, {"length": 4096})
    assert (chunked_fits.status_code, chunked_fits.json()) == (200, {"length": 4096})
    for refused in (declared, chunked):
        assert (refused.status_code, refused.json()) == (413, {"error": "Payload too large"})
        assert refused.headers["cache-control"] == "no-store" and refused.headers["x-request-id"]
