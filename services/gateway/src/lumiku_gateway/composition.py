"""Project responses composed with their avatars: projects own the projects, avatars own the avatars, and
the gateway joins them so the frontend keeps the spec's single-call shape (`project.avatars`).

The projects service answers through the same `forward` as every other route (so its failures are the same
502/503/504); a successful answer gets each project's newest avatars embedded. If the avatars service cannot
answer, the projects are still returned (with `avatars: []`) and the response says so in
`X-Composition-Degraded`: a list of projects is more useful than an error.

A list needs the projects' ids before it can ask for their avatars, two round trips one after the other. The
ids a user's page showed last time are remembered (`PageHints`), and the avatars of those are asked for at the
same time as the page: when the page still holds no other project (a list asked for again, the common case),
that answer is used; otherwise the avatars are asked for again, for the ids the page has. Both calls start
after the request came, so either answer is as fresh as the one after the other.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any

import pydantic_core
from fastapi import Request
from starlette.responses import Response

from lumiku_common.auth import User
from lumiku_common.clients.avatars import AvatarJson, AvatarsClient
from lumiku_common.errors import AppError
from lumiku_common.logs import get_logger
from lumiku_common.prefetch import Remembered, ahead
from lumiku_gateway.proxy import forward
from lumiku_gateway.routes import APP
from lumiku_gateway.upstreams import Upstream

log = get_logger(__name__)

_LIST = re.compile(rf"^{APP}/projects$")
_ONE = re.compile(rf"^{APP}/projects/(?P<id>[^/]+)$")
AvatarsByProject = dict[str, list[AvatarJson]]
# Which project responses carry `avatars`: the list, one project (read or updated), a created project.
_COMPOSED = {("GET", "list"), ("GET", "one"), ("PUT", "one"), ("POST", "list")}


class PageHints:
    """The project ids of the list page each user asked for last, by user and query string. Bounded: at most
    `capacity` pages of at most 100 ids (~3.4 KB each, as one string), the least recently used going first."""

    MAX_QUERY = 128  # bytes; a longer query string is not remembered

    def __init__(self, capacity: int = 1024):
        self._pages: Remembered[tuple[str, bytes], str] = Remembered(capacity)

    def get(self, user_id: str, query: bytes) -> list[str]:
        ids = self._pages.get((user_id, query))
        return ids.split(",") if ids else []

    def remember(self, user_id: str, query: bytes, ids: list[str]) -> None:
        if len(query) > self.MAX_QUERY:
            return
        if ids:
            self._pages.put((user_id, query), ",".join(ids))
        else:
            self._pages.forget((user_id, query))


class ProjectComposer:
    def __init__(self, avatars: AvatarsClient | None, per_project_in_list: int, per_project_in_detail: int):
        # No avatars service routed (a partial deployment): every project shows `avatars: []`.
        self.avatars = avatars
        self.per_project_in_list, self.per_project_in_detail = per_project_in_list, per_project_in_detail
        self.hints = PageHints()

    @staticmethod
    def _shape(request: Request) -> str | None:
        path = request.scope["path"]
        return "list" if _LIST.match(path) else "one" if _ONE.match(path) else None

    def applies(self, request: Request) -> bool:
        return (request.method, self._shape(request)) in _COMPOSED

    async def respond(self, projects: Upstream, request: Request, user: User) -> Response:
        one = _ONE.match(request.scope["path"])
        if request.method == "GET" and one is None:
            return await self._list(projects, request, user)
        # A project just created has no avatars yet; for one project, both are asked at once.
        ids = [one["id"]] if one is not None else []
        async with ahead(self._newest(user.id, ids, self.per_project_in_detail)) as avatars:
            return await self._embedded(projects, request, avatars)

    async def _list(self, projects: Upstream, request: Request, user: User) -> Response:
        query: bytes = request.scope["query_string"]
        hinted = self.hints.get(user.id, query)
        async with ahead(self._newest(user.id, hinted, self.per_project_in_list)) as early:  # no call if no hint
            response = await forward(projects, request, whole=True)
            body = _json_of(response, "projects", list)
            if body is None:
                return response
            ids = [p["id"] for p in body["projects"]]
            self.hints.remember(user.id, query, ids)
            fetch = early if ids and set(ids) <= set(hinted) else self._newest(user.id, ids, self.per_project_in_list)
            avatars = await _unless_failed(fetch)
        for project in body["projects"]:
            project["avatars"] = (avatars or {}).get(project["id"], [])
        return _composed(response, body, avatars is None)

    async def _embedded(self, projects: Upstream, request: Request, avatars: Awaitable[AvatarsByProject]) -> Response:
        response = await forward(projects, request, whole=True)
        body = _json_of(response, "project", dict)
        if body is None:
            return response
        found = await _unless_failed(avatars)
        body["project"]["avatars"] = (found or {}).get(body["project"]["id"], [])
        return _composed(response, body, found is None)

    async def _newest(self, user_id: str, project_ids: list[str], limit: int) -> AvatarsByProject:
        if not project_ids or self.avatars is None:
            return {}
        return (await self.avatars.newest_by_project(user_id, project_ids, limit)).avatars


async def _unless_failed(avatars: Awaitable[AvatarsByProject]) -> AvatarsByProject | None:
    """The avatars, or None when the avatars service could not give them (the answer is then degraded). Only
    an answer that is used counts: an early call found unneeded fails unseen."""
    try:
        return await avatars
    except (AppError, ValueError) as exc:
        log.warning("composition_degraded", service="avatars", error=repr(exc))
        return None


def declare_composed_schema(schemas: dict[str, Any]) -> None:
    """The merged OpenAPI shows projects as the gateway answers them: with their avatars embedded."""
    project, avatar = schemas.get("ProjectOut"), schemas.get("AvatarOut")
    if project is not None and avatar is not None:
        items = {"$ref": "#/components/schemas/AvatarOut"}
        project.setdefault("properties", {})["avatars"] = {"type": "array", "items": items, "title": "Avatars"}
        project.setdefault("required", []).append("avatars")


def _json_of(response: Response, key: str, kind: type) -> dict[str, Any] | None:
    """The body of a successful answer in the projects contract's shape; None for anything to pass on as is
    (errors, and whatever a projects service of another version might answer)."""
    if response.status_code not in (200, 201) or not response.headers.get("content-type", "").startswith(
        "application/json"
    ):
        return None
    try:
        body = pydantic_core.from_json(bytes(response.body))
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get(key), kind):
        return None
    projects = body[key] if kind is list else [body[key]]
    if not all(isinstance(p, dict) and isinstance(p.get("id"), str) for p in projects):
        return None
    return body


def _composed(upstream: Response, body: dict[str, Any], degraded: bool) -> Response:
    headers = {k: v for k, v in upstream.headers.items() if k not in ("content-length", "content-type")}
    if degraded:
        headers["X-Composition-Degraded"] = "avatars"
    # pydantic-core encodes in one native pass (json.dumps walks every avatar in Python).
    content = pydantic_core.to_json(body)
    return Response(content, status_code=upstream.status_code, headers=headers, media_type="application/json")
