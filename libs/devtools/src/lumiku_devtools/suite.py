"""The services of the suite and where they listen in development; `lumiku dev` runs them all."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from lumiku_common.http_server import KEEP_ALIVE_SECONDS, PROTOCOL


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    port: int
    factory: str  # "module:function" returning the ASGI app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


SERVICES: tuple[ServiceEntry, ...] = (
    ServiceEntry("projects", 8101, "lumiku_projects.main:create_app"),
    ServiceEntry("avatars", 8102, "lumiku_avatars.main:create_app"),
    ServiceEntry("generation", 8103, "lumiku_generation.main:create_app"),
    ServiceEntry("credits", 8104, "lumiku_credits.main:create_app"),
    ServiceEntry("usage", 8105, "lumiku_usage.main:create_app"),
)
GATEWAY = ServiceEntry("gateway", 8080, "lumiku_gateway.main:create_app")


def uvicorn_command(factory: str, port: int, *options: str) -> list[str]:
    """How every local process of the suite is started (`lumiku dev`, benchmarks, process tests); with the
    bounded request heads of lumiku_common.http_server, like deploy/Dockerfile."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--http",
        PROTOCOL,
        "--timeout-keep-alive",
        str(KEEP_ALIVE_SECONDS),
        "--loop",
        "uvloop",  # explicit: `auto` silently falls back to asyncio's slower loop if uvloop is missing
        *options,
    ]
