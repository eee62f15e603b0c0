"""Project responses composed with avatars: the real projects service, and an avatars service that
answers the internal by-projects contract (the real one is tested end to end in the avatars suite)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Query

import lumiku_projects
from lumiku_common.auth import ServiceCaller
from lumiku_devtools.testing import (
    auth,
    eventually,
    free_port,
    lifespan_of,
    prepare_database,
    running,
    settings_for_tests,
)
from lumiku_gateway.composition import PageHints
from lumiku_gateway.main import create_app
from lumiku_gateway.settings import GatewaySettings
from lumiku_projects.main import create_app as create_projects
from lumiku_projects.settings import ProjectsSettings

URL = "/api/apps/avatar-creator/projects"
ASGIApp = Callable[[dict, Any, Any], Awaitable[None]]
Wrap = Callable[[ASGIApp], ASGIApp]


def avatars_app(
    calls: list[dict], broken: bool = False, asked: asyncio.Event | None = None, stalled: Stall | None = None
) -> FastAPI:
    app = FastAPI()
    app.state.settings = settings_for_tests(GatewaySettings)

    @app.get("/internal/avatars/by-projects")
    async def by_projects(
        _: ServiceCaller,
        user_id: str = Query(alias="userId"),
        project_ids: str = Query(alias="projectIds"),
        limit: int = Query(alias="limitPerProject"),
    ) -> dict:
        if broken:
            raise RuntimeError("avatars is having a bad day")
        calls.append({"userId": user_id, "projectIds": project_ids.split(","), "limit": limit})
        if asked is not None:
            asked.set()
        if stalled is not None:
            await stalled.wait()
        return {"avatars": {pid: [{"id": f"{pid}-a{i}"} for i in range(2)] for pid in project_ids.split(",")}}

    return app


class Stall:
    """While `on`, avatars answers no call (until it is cancelled, which is counted)."""

    def __init__(self) -> None:
        self.on, self.cancelled = False, 0

    async def wait(self) -> None:
        if self.on:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise


@pytest.fixture
async def compose():
    """Starts the real projects service and a gateway composing it with the given avatars app."""
    settings = settings_for_tests(ProjectsSettings)
    await prepare_database(settings, Path(lumiku_projects.__file__).parent / "migrations")
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            avatars: FastAPI, projects_reachable: bool = True, wrap: Wrap | None = None
        ) -> httpx.AsyncClient:
            projects = await stack.enter_async_context(lifespan_of(create_projects(settings)))
            # Unreachable: a real connection to a port nothing listens on.
            projects_url = "http://projects" if projects_reachable else f"http://127.0.0.1:{free_port()}"
            gateway_settings = settings_for_tests(
                GatewaySettings,
                service_urls={"projects": projects_url, "avatars": "http://avatars"},
                rate_limit_enabled=False,
            )
            transports: dict[str, httpx.AsyncBaseTransport] = {
                "avatars": httpx.ASGITransport(app=avatars, raise_app_exceptions=False)
            }
            if projects_reachable:
                transports["projects"] = httpx.ASGITransport(app=wrap(projects.app) if wrap else projects.app)
            client = await stack.enter_async_context(running(create_app(gateway_settings, transports)))
            client.headers.update(auth(settings, "alice"))
            return client

        yield start


async def test_list_and_detail_embed_avatars(compose):
    calls: list[dict] = []
    api = await compose(avatars_app(calls))
    ids = [(await api.post(URL, json={"name": f"P{i}"})).json()["project"]["id"] for i in range(3)]
    listed = (await api.get(URL)).json()["projects"]
    assert [p["avatars"] for p in listed] == [[{"id": f"{pid}-a0"}, {"id": f"{pid}-a1"}] for pid in ids[::-1]]
    assert calls[-1] == {"userId": "alice", "projectIds": ids[::-1], "limit": 10}

    detail = await api.get(f"{URL}/{ids[0]}")
    assert detail.json()["project"]["avatars"][0]["id"] == f"{ids[0]}-a0"
    assert calls[-1]["limit"] == 100 and "x-composition-degraded" not in detail.headers


async def test_missing_project_stays_404(compose):
    api = await compose(avatars_app([]))
    response = await api.get(f"{URL}/nope")
    assert (response.status_code, response.json()) == (404, {"error": "Project not found"})


async def test_avatars_outage_degrades_to_empty_avatars(compose):
    api = await compose(avatars_app([], broken=True))
    pid = (await api.post(URL, json={"name": "P"})).json()["project"]["id"]
    listed = await api.get(URL)
    detail = await api.get(f"{URL}/{pid}")
    assert listed.status_code == 200 and listed.json()["projects"][0]["avatars"] == []
    assert detail.status_code == 200 and detail.json()["project"]["avatars"] == []
    assert listed.headers["x-composition-degraded"] == "avatars"


async def test_empty_list_does_not_call_avatars(compose):
    calls: list[dict] = []
    api = await compose(avatars_app(calls))
    assert (await api.get(URL)).json()["projects"] == []
    assert calls == []


async def test_created_and_updated_projects_carry_avatars_too(compose):
    """Every project response has the spec's `avatars`: [] for a new project, the avatars after an update."""
    calls: list[dict] = []
    api = await compose(avatars_app(calls))
    created = await api.post(URL, json={"name": "P"})
    assert created.status_code == 201 and created.json()["project"]["avatars"] == []
    assert calls == []  # nothing to ask about a project that did not exist a moment ago
    pid = created.json()["project"]["id"]
    updated = await api.put(f"{URL}/{pid}", json={"name": "Renamed"})
    assert updated.json()["project"]["name"] == "Renamed"
    assert [a["id"] for a in updated.json()["project"]["avatars"]] == [f"{pid}-a0", f"{pid}-a1"]


async def test_projects_down_is_503_on_composed_routes(compose):
    """Composed routes fail like every routed path when the projects service cannot be reached."""
    api = await compose(avatars_app([]), projects_reachable=False)
    for response in (await api.get(URL), await api.get(f"{URL}/p1"), await api.post(URL, json={"name": "P"})):
        assert (response.status_code, response.json()["error"]) == (503, "Service unavailable")


class HeldList:
    """Wraps the projects app: while armed, a list is answered only once the avatars service has been asked
    (or after `patience` seconds, counted in `late`): a gateway asking one after the other cannot be quick.
    `status` replaces the answer's status when set."""

    def __init__(self, patience: float = 5) -> None:
        self.asked, self.armed, self.late, self.status, self.patience = asyncio.Event(), False, 0, 0, patience

    def __call__(self, app: ASGIApp) -> ASGIApp:
        async def held(scope: dict, receive: Any, send: Any) -> None:
            if (
                self.armed
                and scope["type"] == "http"
                and scope["method"] == "GET"
                and scope["path"].endswith("/projects")
            ):
                self.asked.clear()
                try:
                    await asyncio.wait_for(self.asked.wait(), self.patience)
                except TimeoutError:
                    self.late += 1
                if self.status:
                    await send({"type": "http.response.start", "status": self.status, "headers": []})
                    await send({"type": "http.response.body", "body": b""})
                    return
            await app(scope, receive, send)

        return held


async def test_a_list_asked_again_asks_for_its_avatars_at_the_same_time(compose):
    calls: list[dict] = []
    held = HeldList()
    api = await compose(avatars_app(calls, asked=held.asked), wrap=held)
    ids = [(await api.post(URL, json={"name": f"P{i}"})).json()["project"]["id"] for i in range(3)]
    first = await api.get(URL)
    held.armed = True
    again = await api.get(URL)
    assert held.late == 0  # the avatars were asked for while the page was still being answered
    assert again.json() == first.json() and "x-composition-degraded" not in again.headers
    assert [c["projectIds"] for c in calls] == [ids[::-1], ids[::-1]]  # one call each, not two


async def test_a_page_that_changed_gets_the_avatars_of_what_it_holds(compose):
    calls: list[dict] = []
    held = HeldList()
    api = await compose(avatars_app(calls, asked=held.asked), wrap=held)
    old = (await api.post(URL, json={"name": "Old"})).json()["project"]["id"]
    await api.get(URL)
    new = (await api.post(URL, json={"name": "New"})).json()["project"]["id"]
    held.armed = True
    listed = (await api.get(URL)).json()["projects"]
    assert [(p["id"], [a["id"] for a in p["avatars"]]) for p in listed] == [
        (new, [f"{new}-a0", f"{new}-a1"]),
        (old, [f"{old}-a0", f"{old}-a1"]),
    ]
    # The hint (the old page) went out with the page; the page's own ids after it.
    assert [c["projectIds"] for c in calls] == [[old], [old], [new, old]]


async def test_a_page_now_empty_waits_for_no_avatars(compose):
    """The early call for the last page's ids is not needed by an empty page: it is neither awaited (avatars
    answers nothing here) nor a reason to call the answer degraded."""
    stalled = Stall()
    api = await compose(avatars_app([], stalled=stalled))
    pid = (await api.post(URL, json={"name": "P"})).json()["project"]["id"]
    await api.get(URL)
    assert (await api.delete(f"{URL}/{pid}")).status_code == 200
    stalled.on = True
    empty = await asyncio.wait_for(api.get(URL), 10)
    assert empty.json()["projects"] == [] and "x-composition-degraded" not in empty.headers
    await eventually(lambda: asyncio.sleep(0, stalled.cancelled == 1), what="the early call cancelled")


async def test_page_hints_are_per_user_and_per_query(compose):
    calls: list[dict] = []
    held = HeldList(patience=0.5)
    api = await compose(avatars_app(calls, asked=held.asked), wrap=held)
    alice = (await api.post(URL, json={"name": "A"})).json()["project"]["id"]
    await api.get(URL)
    bob = dict(auth(settings_for_tests(ProjectsSettings), "bob"))
    bobs = (await api.post(URL, json={"name": "B"}, headers=bob)).json()["project"]["id"]
    held.armed = True
    await api.get(URL, headers=bob)  # no hint of bob's: alice's page is not his
    await api.get(URL, params={"limit": 5})  # nor of alice's for another query
    assert held.late == 2  # neither list had an early call
    assert [(c["userId"], c["projectIds"]) for c in calls] == [("alice", [alice]), ("bob", [bobs]), ("alice", [alice])]


async def test_an_answer_without_a_page_drops_the_early_ask(compose):
    calls: list[dict] = []
    stalled = Stall()
    held = HeldList()
    api = await compose(avatars_app(calls, asked=held.asked, stalled=stalled), wrap=held)
    await api.post(URL, json={"name": "P"})
    await api.get(URL)
    held.armed, held.status, stalled.on = True, 502, True
    response = await api.get(URL)
    assert response.status_code == 502 and "avatars" not in response.text
    await eventually(lambda: asyncio.sleep(0, stalled.cancelled == 1), what="the early call cancelled")
    held.armed, stalled.on = False, False
    assert (await api.get(URL)).json()["projects"][0]["avatars"]  # and the next list is composed again


def test_page_hints_are_bounded_least_recently_used_first():
    hints = PageHints(capacity=2)
    hints.remember("u", b"", ["a", "b"])
    hints.remember("u", b"page=2", ["c"])
    assert hints.get("u", b"") == ["a", "b"]  # used: now the most recent
    hints.remember("v", b"", ["d"])
    assert (hints.get("u", b"page=2"), hints.get("u", b""), hints.get("v", b"")) == ([], ["a", "b"], ["d"])
    hints.remember("v", b"", [])  # an empty page is forgotten, not remembered
    hints.remember("u", b"x" * (PageHints.MAX_QUERY + 1), ["e"])
    assert hints.get("v", b"") == [] and hints.get("u", b"x" * (PageHints.MAX_QUERY + 1)) == []
