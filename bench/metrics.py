"""`python -m bench.metrics`: the per-request cost of the HTTP metrics middleware, in-process (no sockets).

Two baselines measured in the same run: a bare ASGI app (the middleware's own cost in µs per request) and a
service built by create_service answering a routed GET with and without the middleware (its share of a real
request's CPU). Best of several rounds, since the machine is shared."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from fastapi import APIRouter
from starlette.types import Receive, Scope, Send

from bench.lib import RESULTS, Stats, report
from lumiku_common.metrics import HttpMetricsMiddleware
from lumiku_common.service import ServiceSpec, create_service
from lumiku_common.settings import ServiceSettings


class _Route:
    path = "/items/{item_id}"


async def _bare(scope: Scope, receive: Receive, send: Send) -> None:
    scope["route"] = _Route
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _service(with_metrics: bool) -> Any:
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    async def ready(_: Any) -> dict[str, str]:
        return {"self": "ok"}

    settings = ServiceSettings(service_name="bench", environment="test", log_level="WARNING")
    app = create_service(ServiceSpec(settings=settings, routers=[router], stateless=True, readiness=ready))
    if not with_metrics:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not HttpMetricsMiddleware]
    return app


async def _per_request_us(apps: list[Any], path: str, requests: int, rounds: int) -> list[float]:
    """Best µs per request of each app; rounds alternate between the apps, so drift hits them alike."""
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode()}
    scope.update(query_string=b"", headers=[], http_version="1.1", scheme="http", server=("bench", 80))
    scope.update(client=None, root_path="", app=None)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_: dict[str, Any]) -> None:
        return None

    best = [float("inf")] * len(apps)
    for _ in range(rounds):
        for index, app in enumerate(apps):
            started = time.perf_counter()
            for _ in range(requests):
                await app(dict(scope), receive, send)
            best[index] = min(best[index], (time.perf_counter() - started) / requests * 1e6)
    return best


def _stats(name: str, us: float, requests: int) -> Stats:
    ms = round(us / 1000, 4)
    return Stats(name, 1, requests, 0, round(us * requests / 1e6, 3), round(1e6 / us, 1), ms, ms, ms, ms)


async def run(requests: int, rounds: int) -> None:
    bare, wrapped = await _per_request_us(
        [_bare, HttpMetricsMiddleware(_bare, "bench")], "/items/1", requests * 10, rounds
    )
    plain, metered = await _per_request_us([_service(False), _service(True)], "/items/1", requests, rounds)
    stats = [
        _stats("bare ASGI app", bare, requests * 10),
        _stats("bare ASGI app + metrics middleware", wrapped, requests * 10),
        _stats("service GET /items/{id}", plain, requests),
        _stats("service GET /items/{id} + metrics", metered, requests),
    ]
    ratios = {
        "middleware_us_per_request": round(wrapped - bare, 3),
        "service_with_metrics_over_without": round(metered / plain, 4),
    }
    report("metrics", stats, ratios, {"rounds": rounds, "note": "per-request CPU in-process, best round"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    asyncio.run(run(args.requests, args.rounds))


if __name__ == "__main__":
    main()
