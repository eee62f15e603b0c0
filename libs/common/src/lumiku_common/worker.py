"""`python -m lumiku_common.worker SERVICE`: a service's workers without its public API.

Runs the service's own app (built by `lumiku_SERVICE.main:create_app`) with `RUN_WORKERS=true`, so its
lifespan does everything it does in the API process — migrations, outbox relay, consumers, background
loops — and serves only `/health` and `/ready` (for probes) on `--port` (default `$PORT`, else 8000); every
other path answers 404 (its Prometheus metrics are on `METRICS_PORT` when set). Deploy it next to API
processes started with `RUN_WORKERS=false`, so the API and the workers scale apart. Several workers of one
service may run at once: the relay hands each outbox row to one of them (`SKIP LOCKED`) and queues share
deliveries among consumers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from typing import Any

import uvicorn

from lumiku_common.http_server import KEEP_ALIVE_SECONDS, LimitedHttpToolsProtocol
from lumiku_common.service import is_stateless

PROBE_PATHS = frozenset({"/health", "/ready"})

ASGIApp = Any


def probes_only(app: ASGIApp) -> ASGIApp:
    """Passes lifespan and the probe paths to `app`; answers 404 to everything else."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan" or (scope["type"] == "http" and scope["path"] in PROBE_PATHS):
            await app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": "Not found"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return asgi


def build(service: str) -> ASGIApp:
    os.environ["RUN_WORKERS"] = "true"  # read by the service's settings, built inside create_app()
    try:
        module = importlib.import_module(f"lumiku_{service}.main")
    except ModuleNotFoundError as exc:
        raise SystemExit(f"lumiku worker: no service {service!r} installed ({exc})") from exc
    app = module.create_app()
    if is_stateless(app):
        raise SystemExit(f"lumiku worker: {service} has no workers; run its API only")
    return probes_only(app)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lumiku_common.worker", description=__doc__.splitlines()[0])
    parser.add_argument("service", help="service name, e.g. projects (module lumiku_projects)")
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))  # probed by the kubelet
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args(argv)
    app = build(args.service)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        http=LimitedHttpToolsProtocol,  # probes are served over HTTP too: the same bounded request heads
        log_level=os.environ.get("LOG_LEVEL", "info").lower(),
        lifespan="on",  # a failing start-up (migration, settings) must stop the process, not be ignored
        timeout_graceful_shutdown=20,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


if __name__ == "__main__":
    main()
