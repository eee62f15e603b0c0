"""A `LeanRoute` answers every request exactly as FastAPI's general path does: the same app is built twice, once
with `Router` and once with a plain `APIRouter`, and each request below must get the same status, headers and
body from both. Which routes take the short way is checked apart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from lumiku_common.errors import AppError, install_error_handlers
from lumiku_common.routing import LeanRoute, Router, _plan
from lumiku_common.schemas import PageParams, RequestModel

CALLS: list[str] = []


class Teapot(AppError):
    status_code = 418
    message = "No coffee"


async def caller(request: Request) -> str:
    CALLS.append("caller")
    name = request.headers.get("x-caller")
    if not name:
        raise Teapot()
    return name


async def greeting(request: Request, who: Annotated[str, Depends(caller)]) -> str:
    return f"hello {who}"


UNITS: list[str] = []  # what the unit of work saw: entered, then committed or rolled back


async def unit_of_work() -> AsyncIterator[str]:
    UNITS.append("begin")
    try:
        yield "work"
    except Exception as exc:
        UNITS.append(f"rollback {type(exc).__name__}")
        raise
    UNITS.append("commit")


Work = Annotated[str, Depends(unit_of_work, scope="function")]


class Rename(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=5)]
    note: str | None = None


class Lookup(BaseModel):
    model_config = ConfigDict(validate_by_name=True)
    user_id: Annotated[str, Field(alias="userId", min_length=1)]
    limit: Annotated[int, Field(ge=1, le=10)] = 5


def build(router: APIRouter) -> FastAPI:
    @router.get("/items")
    async def items(who: Annotated[str, Depends(caller)], page: Annotated[PageParams, Query()]) -> Response:
        return JSONResponse({"who": who, "page": page.page, "limit": page.limit})

    @router.get("/items/{item_id}")
    async def item(
        item_id: str, who: Annotated[str, Depends(caller)], hello: Annotated[str, Depends(greeting)]
    ) -> Response:
        return JSONResponse({"id": item_id, "who": who, "hello": hello, "calls": CALLS.count("caller")})

    @router.get("/lookup")
    async def lookup(query: Annotated[Lookup, Query()]) -> Response:
        return JSONResponse(query.model_dump())

    @router.get("/strings/{key}")
    async def strings(key: str, user_id: Annotated[str, Query(alias="userId")], b: str) -> Response:
        return JSONResponse({"key": key, "user": user_id, "b": b})

    @router.get("/plain")
    async def plain(n: int = 1) -> dict[str, int]:  # a scalar query and a returned dict: the general way
        return {"n": n}

    @router.get("/header")
    async def header(x_thing: Annotated[str, Header()]) -> Response:
        return JSONResponse({"thing": x_thing})

    @router.put("/items/{item_id}")
    async def rename(item_id: str, who: Annotated[str, Depends(caller)], work: Work, body: Rename) -> Response:
        if body.name == "tea":
            raise Teapot()  # the unit of work sees it and rolls back
        return JSONResponse({"id": item_id, "who": who, "work": work, "body": body.model_dump(), "units": UNITS})

    @router.post("/request-scoped")
    async def request_scoped(work: Annotated[str, Depends(unit_of_work)]) -> Response:  # exits after the response
        return JSONResponse({"work": work})

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    return app


REQUESTS = [
    ("/items", {"x-caller": "ann"}),
    ("/items?page=2&limit=7", {"x-caller": "ann"}),
    ("/items?page=0", {"x-caller": "ann"}),
    ("/items?page=abc&limit=1000", {"x-caller": "ann"}),
    ("/items?page=1&page=3", {"x-caller": "ann"}),
    ("/items?limit=", {"x-caller": "ann"}),
    ("/items?extra=1", {"x-caller": "ann"}),
    ("/items?page=%20", {"x-caller": "ann"}),
    ("/items", {}),
    ("/items/abc", {"x-caller": "bob"}),
    ("/items/%C3%A9t%C3%A9", {"x-caller": "bob"}),
    ("/items/abc", {}),
    ("/lookup?userId=u1", {}),
    ("/lookup?userId=u1&limit=10", {}),
    ("/lookup?user_id=u1", {}),
    ("/lookup?userId=", {}),
    ("/lookup", {}),
    ("/lookup?userId=u1&limit=11", {}),
    ("/strings/k?userId=u&b=2", {}),
    ("/strings/k?userId=&b=", {}),
    ("/strings/k?userId=u", {}),
    ("/strings/k?user_id=u&b=1", {}),
    ("/strings/k?userId=u&userId=v&b=1", {}),
    ("/strings/k?userId=u&b=1&c=3", {}),
    ("/strings/k?userId=%00&b=%C3%A9", {}),
    ("/plain?n=4", {}),
    ("/plain?n=x", {}),
    ("/header", {"x-thing": "t"}),
    ("/header", {}),
]


@pytest.fixture(scope="module")
def apps() -> tuple[FastAPI, FastAPI]:
    return build(Router()), build(APIRouter())


@pytest.mark.parametrize(("url", "headers"), REQUESTS)
async def test_a_lean_route_answers_as_fastapi_does(apps: tuple[FastAPI, FastAPI], url: str, headers: dict[str, str]):
    answers = []
    for app in apps:
        CALLS.clear()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            answers.append(await client.get(url, headers=headers))
    lean, general = answers
    assert (lean.status_code, lean.headers, lean.content) == (general.status_code, general.headers, general.content)


async def test_a_dependency_runs_once_per_request_however_often_it_is_needed(apps: tuple[FastAPI, FastAPI]):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(apps[0]), base_url="http://test") as client:
        CALLS.clear()
        answer = await client.get("/items/x", headers={"x-caller": "c"})
    assert answer.json() == {"id": "x", "who": "c", "hello": "hello c", "calls": 1}


def test_only_routes_fastapi_would_solve_the_same_way_take_the_short_one():
    router = Router()
    build(router)
    routes = [route for route in router.routes if isinstance(route, LeanRoute)]
    assert len(routes) == 8
    planned = {(route.path, *route.methods) for route in routes if _plan(route.dependant) is not None}
    assert planned == {
        ("/items", "GET"),
        ("/items/{item_id}", "GET"),
        ("/items/{item_id}", "PUT"),
        ("/lookup", "GET"),
        ("/strings/{key}", "GET"),
    }  # a scalar query, a header, a generator exiting after the response: the general way


async def test_overridden_dependencies_are_honoured():
    app = build(Router())
    app.dependency_overrides[caller] = lambda: "override"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
        answer = await client.get("/items")
    assert answer.json() == {"who": "override", "page": 1, "limit": 100}


async def test_a_dependency_given_by_include_router_still_runs():
    async def refuse() -> None:
        raise Teapot()

    app = FastAPI()
    install_error_handlers(app)
    router = Router()

    @router.get("/open")
    async def open_() -> Response:
        return JSONResponse({"open": True})

    app.include_router(router, dependencies=[Depends(refuse)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
        assert (await client.get("/open")).status_code == 418


@pytest.mark.parametrize(
    ("url", "general"),
    [
        ("/items?page=2", False),
        ("/items/x", False),
        ("/strings/k?userId=u&b=", False),
        ("/items?page=0", True),
        ("/items?other=1", True),
        ("/strings/k?userId=u", True),
    ],
)
async def test_what_the_short_way_cannot_answer_goes_the_general_way(
    apps: tuple[FastAPI, FastAPI], monkeypatch: pytest.MonkeyPatch, url: str, general: bool
):
    solved = []
    solve = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        solved.append(url)
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(apps[0]), base_url="http://test") as client:
        await client.get(url, headers={"x-caller": "c"})
    assert bool(solved) is general


BODIES = [
    ("application/json", b'{"name": "ann"}'),
    ("application/json", b'{"name": "ann", "note": "n"}'),
    ("application/json", b'{"name": "  ann  "}'),
    ("application/json", b'{"name": "tea"}'),
    ("application/json", b'{"name": ""}'),
    ("application/json", b'{"name": "toolong"}'),
    ("application/json", b'{"name": "a\\u0000b"}'),
    ("application/json", b'{"name": "ann", "extra": 1}'),
    ("application/json", b'{"name": 5}'),
    ("application/json", b'{"name": "a", "name": "b"}'),
    ("application/json", b'["ann"]'),
    ("application/json", b'"ann"'),
    ("application/json", b"null"),
    ("application/json", b'{"name": NaN}'),
    ("application/json", b'{"name": "ann"'),
    ("application/json", b""),
    ("application/json", b"[" * 10_000 + b"]" * 10_000),
    ("application/json", b'{"name": ' * 5_000 + b'"a"' + b"}" * 5_000),
    ("application/json", b"\xff\xfe"),
    ("application/json", '{"name": "\u00e9t\u00e9"}'.encode("utf-16")),
    ("application/json; charset=utf-8", b'{"name": "ann"}'),
    ("text/plain", b'{"name": "ann"}'),
    (None, b'{"name": "ann"}'),
    ("application/x-www-form-urlencoded", b"name=ann"),
]


@pytest.mark.parametrize("caller_header", [{"x-caller": "ann"}, {}], ids=["caller", "no-caller"])
@pytest.mark.parametrize(("content_type", "body"), BODIES)
async def test_a_lean_route_reads_a_body_and_runs_a_unit_of_work_as_fastapi_does(
    apps: tuple[FastAPI, FastAPI], content_type: str | None, body: bytes, caller_header: dict[str, str]
):
    answers, units = [], []
    for app in apps:
        UNITS.clear()
        headers = {**caller_header, **({"content-type": content_type} if content_type else {})}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            answers.append(await client.put("/items/i1", content=body, headers=headers))
        units.append(list(UNITS))
    lean, general = answers
    assert (lean.status_code, lean.headers, lean.content) == (general.status_code, general.headers, general.content)
    assert units[0] == units[1]


async def test_a_unit_of_work_commits_before_the_response_and_rolls_back_on_an_error(apps: tuple[FastAPI, FastAPI]):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(apps[0]), base_url="http://test") as client:
        UNITS.clear()
        ok = await client.put("/items/i1", json={"name": "ann"}, headers={"x-caller": "c"})
        assert ok.json()["units"] == ["begin"] and UNITS == ["begin", "commit"]
        UNITS.clear()
        refused = await client.put("/items/i1", json={"name": "tea"}, headers={"x-caller": "c"})
        assert refused.status_code == 418 and UNITS == ["begin", "rollback Teapot"]


# --- the general way, taken before anything ran; validators on a model; a client gone --------------


async def paged(page: Annotated[PageParams, Query()]) -> int:
    return page.page


def build_ordered(router: APIRouter) -> FastAPI:
    @router.get("/ordered")
    async def ordered(
        work: Work, who: Annotated[str, Depends(caller)], page: Annotated[int, Depends(paged)]
    ) -> Response:
        return JSONResponse({"page": page})

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    return app


@pytest.mark.parametrize("url", ["/ordered?page=0", "/ordered?page=2"])
async def test_a_request_that_goes_the_general_way_runs_no_dependency_twice(url: str):
    """A dependency's query the short way cannot take sends the request the general way: the dependencies
    solved before it must not have run (twice, with a unit of work rolled back for nothing)."""
    seen = []
    for app in (build_ordered(Router()), build_ordered(APIRouter())):
        CALLS.clear()
        UNITS.clear()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            answer = await client.get(url, headers={"x-caller": "c"})
        seen.append((answer.status_code, answer.content, list(CALLS), list(UNITS)))
    assert seen[0] == seen[1]


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
async def test_a_client_gone_before_its_body_came_is_answered_as_fastapi_answers_it(content_type: str):
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    answers = []
    for app in build(Router()), build(APIRouter()):
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "PUT",
            "scheme": "http",
            "path": "/items/i1",
            "raw_path": b"/items/i1",
            "root_path": "",
            "query_string": b"",
            "server": ("test", 80),
            "client": ("c", 1),
            "headers": [(b"host", b"test"), (b"x-caller", b"c"), (b"content-type", content_type.encode())],
        }
        try:
            await app(scope, receive, send)
        except Exception as exc:  # what the server would log as an error
            sent.append({"raised": type(exc).__name__})
        answers.append([m.get("status", m.get("raised")) for m in sent if "status" in m or "raised" in m])
    assert answers[0] == answers[1]


def refuse_tea(body: Rename) -> Rename:
    if body.name == "tea":
        raise ValueError("no tea")
    return body


def refuse_zero(page: PageParams) -> PageParams:
    if page.page == 2:
        raise ValueError("not page 2")
    return page


async def test_validators_annotated_on_a_body_or_query_model_run_as_fastapi_runs_them():
    answers = []
    for router in Router(), APIRouter():

        @router.post("/checked")
        async def checked(body: Annotated[Rename, AfterValidator(refuse_tea)]) -> Response:
            return JSONResponse(body.model_dump())

        @router.get("/checked")
        async def checked_query(page: Annotated[PageParams, Query(), AfterValidator(refuse_zero)]) -> Response:
            return JSONResponse({"page": page.page})

        app = FastAPI()
        install_error_handlers(app)
        app.include_router(router)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            body = await client.post("/checked", json={"name": "tea"})
            query = await client.get("/checked?page=2")
        answers.append((body.status_code, body.content, query.status_code, query.content))
    assert answers[0] == answers[1]
