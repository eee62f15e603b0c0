"""The framework floor of bench.gateway: a bare Starlette app answering every GET with the same JSON bytes the
composed `GET /projects` answers (read from the file named by `FLOOR_BODY`), served by the same uvicorn
protocol as the suite. What a request costs below it is the framework, the server and the client."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app() -> Starlette:
    body = Path(os.environ["FLOOR_BODY"]).read_bytes()

    async def answer(_: Request) -> Response:
        return Response(body, media_type="application/json")

    async def ready(_: Request) -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    return Starlette(routes=[Route("/ready", ready), Route("/{path:path}", answer)])
