"""The gateway's metrics: never on its public port, served on METRICS_PORT, counted by route template; its
rate-limit refusals counted by rule."""

from __future__ import annotations

import httpx

from lumiku_devtools.testing import RUN_ID, Metrics, auth, free_port, served, settings_for_tests
from lumiku_gateway.main import create_app
from lumiku_gateway.settings import GatewaySettings

from .test_gateway import APP, echo_app

PROJECTS = f"{APP}/projects{{/id}}"  # the routing table's template for /projects and /projects/:id


async def test_metrics_are_on_the_metrics_port_only_by_route_template_with_rate_limit_refusals():
    metrics_port = free_port()
    settings = settings_for_tests(
        GatewaySettings,
        service_urls={"projects": "http://projects"},
        rate_limit_enabled=True,
        rate_limits={"api": "1000/60", "create-project": "1/3600"},
        metrics_port=metrics_port,
    )
    app = create_app(settings, {"projects": httpx.ASGITransport(app=echo_app())})
    headers = auth(settings, f"metered-{RUN_ID}")
    async with (
        served(app) as url,
        httpx.AsyncClient(base_url=url, headers=headers) as public,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}") as internal,
    ):
        before = await Metrics.scrape(internal)
        statuses = [(await public.post(f"{APP}/projects", json={})).status_code for _ in range(3)]
        await public.get(f"{APP}/projects/p-{RUN_ID}")
        for path in ("/metrics", "/api/metrics", "/metrics/", "/api/../metrics"):
            hidden = await public.get(path)
            assert hidden.status_code == 404 and "lumiku_" not in hidden.text, path
        after = await Metrics.scrape(internal)

    def grew(name: str, **labels: str) -> float:
        return (after.value(name, **labels) or 0) - (before.value(name, **labels) or 0)

    assert statuses == [200, 429, 429]
    requests = "lumiku_http_request_duration_seconds_count"
    assert grew(requests, service="gateway", method="POST", route=PROJECTS, status="200") == 1
    assert grew(requests, service="gateway", method="POST", route=PROJECTS, status="429") == 2
    assert grew(requests, service="gateway", method="GET", route=PROJECTS, status="200") == 1
    assert grew("lumiku_gateway_rate_limited_total", rule="create-project") == 2
    assert f"p-{RUN_ID}" not in after.label_values()
