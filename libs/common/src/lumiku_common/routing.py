"""Routers whose routes skip FastAPI's general parameter machinery when a request needs none of it.

FastAPI solves an endpoint's parameters the general way on every request: a walk over its dependency tree
with caching, scopes, overrides and per-parameter validation. For a read like `GET /projects` (the caller,
the database, `?page=&limit=`) that walk cost about as much CPU as the read itself.

A `LeanRoute` works out once, when the route is built, whether its endpoint can be called the short way:
its dependencies are `async def` functions of the request (and of other such dependencies) or async generators
scoped to the function (`Depends(..., scope="function")`: a unit of work), its path parameters are plain
strings, its query is one pydantic model (`Annotated[Model, Query()]`) or required plain strings, its body (if
any) is one pydantic model, it has no header or cookie parameters, and it returns a `Response` itself. Such a
route, per request:
- calls each dependency once and the endpoint with what they returned; a generator's exit runs when the
  endpoint is done, before the response is sent, shielded from cancellation (as FastAPI runs it);
- validates the query model from the query string in one call (or takes the strings), but only when every key
  is one of the declared names, each once: anything else (a repeated key, an unknown key, a missing string, a
  value the model refuses) goes the general way, so FastAPI answers it exactly as before, errors included;
- validates the body as FastAPI does (`json.loads`, then the model), but only a body sent as
  `application/json` that the model takes: any other goes the general way, before any dependency ran;
- goes the general way too while dependency overrides are set (tests).
An exception raised by a dependency or the endpoint propagates as it would from FastAPI's handler, to the same
exception handlers. Every other route is left to FastAPI unchanged.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_type_hints

import anyio
import fastapi.routing
from fastapi import APIRouter, params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from fastapi._compat import ModelField

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class _General(Exception):
    """This request takes FastAPI's general path."""


def _plain_query(request: Request, keys: frozenset[str]) -> dict[str, str]:
    """The query as a dict when each key is one of `keys` and comes once (FastAPI reads repeated keys and
    unknown ones in ways of its own: those requests go its way)."""
    query = request.query_params
    if len(query) != len(query.multi_items()) or not keys.issuperset(query.keys()):
        raise _General
    return dict(query)


@dataclass(frozen=True, slots=True)
class _QueryModel:
    """`name: Annotated[Model, Query()]`: the model validated from the query in one call."""

    name: str
    model: type[BaseModel]
    keys: frozenset[str]  # the names a query string may use: each field's alias, else its name

    @classmethod
    def of(cls, fields: list[ModelField]) -> _QueryModel | None:
        info = fields[0].field_info if len(fields) == 1 else None
        model = info.annotation if info is not None and not info.metadata else None  # metadata: validators
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        keys = set()
        for field_name, info in model.model_fields.items():
            alias = info.alias or field_name
            if info.validation_alias not in (None, alias) or _is_sequence(info.annotation):
                return None  # FastAPI reads these differently (alias choices, repeated keys)
            keys.add(alias)
        return cls(fields[0].name, model, frozenset(keys))

    def values(self, request: Request) -> dict[str, Any]:
        try:
            return {self.name: self.model.model_validate(_plain_query(request, self.keys))}
        except ValidationError:
            raise _General from None


@dataclass(frozen=True, slots=True)
class _QueryStrings:
    """Required `str` query parameters without constraints (`user_id: Annotated[str, Query(alias="userId")]`)."""

    names: tuple[tuple[str, str], ...]  # (parameter, alias)
    keys: frozenset[str]

    @classmethod
    def of(cls, fields: list[ModelField]) -> _QueryStrings | None:
        info = [field.field_info for field in fields]
        if not all(i.annotation is str and i.is_required() and not i.metadata for i in info):
            return None
        names = tuple((field.name, field.alias) for field in fields)
        return cls(names, frozenset(alias for _, alias in names))

    def values(self, request: Request) -> dict[str, Any]:
        query = _plain_query(request, self.keys)
        if len(query) != len(self.names):
            raise _General  # one missing: FastAPI's error
        return {name: query[alias] for name, alias in self.names}


@dataclass(frozen=True, slots=True)
class _JsonBody:
    """`body: Model`: the JSON body validated by the model, as FastAPI reads it."""

    name: str
    model: type[BaseModel]

    @classmethod
    def of(cls, fields: list[ModelField]) -> _JsonBody | None:
        info = fields[0].field_info if len(fields) == 1 else None
        model = info.annotation if info is not None else None
        # Not a form, a file, an embedded body, nor one with validators of its own (`Annotated[Model, ...]`).
        plain = type(info) is params.Body and not getattr(info, "embed", False) and not info.metadata
        if not (plain and isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        return cls(fields[0].name, model)

    async def value(self, request: Request) -> BaseModel:
        if request.headers.get("content-type") != "application/json":
            raise _General  # FastAPI's own reading of other (or no) content types
        try:
            body = await request.body()
        except Exception:  # the client went away (FastAPI's 400), a body over a limit: FastAPI's answer
            raise _General from None
        try:
            return self.model.model_validate(json.loads(body))
        except (ValueError, RecursionError):  # not JSON (or nested past the parser), refused: FastAPI's error
            raise _General from None


@dataclass(frozen=True, slots=True)
class _Call:
    """A dependency (or the endpoint) and how to gather its arguments."""

    call: Callable[..., Any]
    request: str | None
    path: tuple[str, ...]
    query: _QueryModel | _QueryStrings | None
    body: _JsonBody | None
    dependencies: tuple[tuple[str, _Call], ...]
    enters: bool = False  # an async generator: entered for the endpoint's call, exited after it

    async def prepare(self, request: Request, prepared: dict[Any, dict[str, Any]]) -> None:
        """The request's parameters for this call and every dependency's, read before any of them runs: one the
        short way cannot take (`_General`) sends the request the general way with nothing run twice."""
        if self.call in prepared:
            return
        values: dict[str, Any] = {name: request.path_params[name] for name in self.path}
        if self.request is not None:
            values[self.request] = request
        if self.query is not None:
            values.update(self.query.values(request))
        if self.body is not None:
            values[self.body.name] = await self.body.value(request)
        prepared[self.call] = values
        for _, dependency in self.dependencies:
            await dependency.prepare(request, prepared)

    async def run(self, prepared: dict[Any, dict[str, Any]], solved: dict[Any, Any], stack: AsyncExitStack) -> Any:
        arguments = dict(prepared[self.call])
        for name, dependency in self.dependencies:
            if dependency.call not in solved:  # FastAPI's per-request cache: each dependency runs once
                solved[dependency.call] = await dependency.run(prepared, solved, stack)
            arguments[name] = solved[dependency.call]
        if self.enters:
            return await stack.enter_async_context(_exit_shielded(asynccontextmanager(self.call)(**arguments)))
        return await self.call(**arguments)


@asynccontextmanager
async def _exit_shielded(context: AbstractAsyncContextManager[Any]) -> AsyncIterator[Any]:
    """`context`, whose exit (a commit or a rollback) runs to its end even if the request is cancelled meanwhile."""
    with anyio.CancelScope() as scope:
        async with context as value:
            try:
                yield value
            finally:
                scope.shield = True


def _is_sequence(annotation: Any) -> bool:
    origin = getattr(annotation, "__origin__", None)
    return origin in (list, set, tuple, frozenset)


def _plan(dependant: Dependant, endpoint: bool = True) -> _Call | None:
    """How to call `dependant` the short way, or None when it needs FastAPI's general one. Only the endpoint may
    take the body (FastAPI embeds bodies shared with dependencies under their names)."""
    unsupported = (
        dependant.header_params,
        dependant.cookie_params,
        dependant.websocket_param_name,
        dependant.http_connection_param_name,
        dependant.response_param_name,
        dependant.background_tasks_param_name,
        dependant.security_scopes_param_name,
        dependant.own_oauth_scopes,
    )
    call = dependant.call
    if any(unsupported) or call is None or getattr(dependant, "concurrency", None) is not None:
        return None
    # A generator (a unit of work) only when its exit comes before the response, where this route runs it.
    enters = inspect.isasyncgenfunction(call) and dependant.scope == "function"
    if not (inspect.iscoroutinefunction(call) or enters):
        return None
    if any(field.field_info.annotation is not str for field in dependant.path_params):
        return None
    query = body = None
    if dependant.query_params:
        query = _QueryModel.of(dependant.query_params) or _QueryStrings.of(dependant.query_params)
        if query is None:
            return None
    if dependant.body_params and (not endpoint or (body := _JsonBody.of(dependant.body_params)) is None):
        return None
    dependencies = []
    for sub in dependant.dependencies:
        if sub.name is None or not sub.use_cache or (planned := _plan(sub, endpoint=False)) is None:
            return None
        dependencies.append((sub.name, planned))
    path = tuple(f.name for f in dependant.path_params)
    return _Call(call, dependant.request_param_name, path, query, body, tuple(dependencies), enters)


def _returns_response(call: Callable[..., Any]) -> bool:
    try:
        returned = get_type_hints(call).get("return")
    except Exception:  # an annotation that does not resolve: let FastAPI handle the route
        return False
    return isinstance(returned, type) and issubclass(returned, Response)


class LeanRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        general = super().get_route_handler()
        dependant = _effective_dependant(self)
        plan = _plan(dependant) if _returns_response(self.endpoint) else None
        if plan is None:
            return general

        async def handler(request: Request) -> Response:
            if request.app.dependency_overrides:
                return await general(request)
            prepared: dict[Any, dict[str, Any]] = {}
            try:
                await plan.prepare(request, prepared)
            except _General:
                return await general(request)
            async with AsyncExitStack() as stack:
                response: Response = await plan.run(prepared, {}, stack)
            return response

        return handler


def _effective_dependant(route: APIRoute) -> Dependant:
    """The dependant FastAPI's own handler uses: an included route's adds what `include_router` gave it
    (FastAPI builds the handler of each inclusion with that context set, see `APIRoute.get_route_handler`)."""
    context = getattr(fastapi.routing, "_effective_route_context_var", None)
    effective = context.get() if context is not None else None
    if effective is not None and effective.original_route is route:
        dependant: Dependant = effective.dependant
        return dependant
    return route.dependant


class Router(APIRouter):
    """An `APIRouter` of `LeanRoute`s: every service declares its routes with this."""

    def __init__(self, **kwargs: Any):
        super().__init__(route_class=LeanRoute, **kwargs)
