"""A `LeanRoute` answers every request exactly as FastAPI's general path does: the same app is built twice, once
with `Router` and once with a plain `APIRouter`, and each request below must get the same status, headers and
body from both. Which routes take the short way is checked apart."""

from __future__ import annotations

from typing import Annotated, Any

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from lumiku_common.errors import AppError, install_error_handlers
from lumiku_common.routing import LeanRoute, Router, _plan
from lumiku_common.schemas import PageParams

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
    routes = {route.path: route for route in router.routes if isinstance(route, LeanRoute)}
    assert len(routes) == 6
    planned = {path for path, route in routes.items() if _plan(route.dependant) is not None}
    assert planned == {
        "/items",
        "/items/{item_id}",
        "/lookup",
        "/strings/{key}",
    }  # a scalar query, a header: the general way


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
