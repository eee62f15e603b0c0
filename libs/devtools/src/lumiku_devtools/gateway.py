"""Test support: the gateway in front of in-process services, as the suite's clients see it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from fastapi import FastAPI

from lumiku_devtools.testing import lifespan_of, running, settings_for_tests, workers_started
from lumiku_gateway.main import create_app
from lumiku_gateway.settings import GatewaySettings

Transports = dict[str, httpx.AsyncBaseTransport]
# An app, or a factory given the transports of the services listed before it (for services that call them).
ServiceApp = FastAPI | Callable[[Transports], FastAPI]


@contextlib.asynccontextmanager
async def gateway_app_for(services: dict[str, ServiceApp], **gateway_settings: Any) -> AsyncIterator[FastAPI]:
    """Starts each service in order (lifespan and workers included) and yields a gateway app routing to them
    (not started: `running` or `served` runs its lifespan); `gateway_settings` override its test settings."""
    async with contextlib.AsyncExitStack() as stack:
        transports: Transports = {}
        for name, service in services.items():
            app = service if isinstance(service, FastAPI) else service(dict(transports))
            manager = await stack.enter_async_context(lifespan_of(app))
            transports[name] = httpx.ASGITransport(app=manager.app)
            await workers_started(app)
        # Rate limits count per user across tests in the shared Redis; their own tests switch them on.
        settings = settings_for_tests(
            GatewaySettings,
            **{"service_urls": {n: f"http://{n}" for n in services}, "rate_limit_enabled": False, **gateway_settings},
        )
        yield create_app(settings, transports)


@contextlib.asynccontextmanager
async def gateway_for(services: dict[str, ServiceApp], **gateway_settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway of `gateway_app_for`, started, and a client of it in-process."""
    async with gateway_app_for(services, **gateway_settings) as app, running(app) as client:
        yield client
