"""Project responses composed with their avatars: projects own the projects, avatars own the avatars, and
the gateway joins them so the frontend keeps the spec's single-call shape (`project.avatars`).

If the avatars service cannot answer, the projects are still returned (with `avatars: []`) and the response
says so in `X-Composition-Degraded`: a list of projects is more useful than an error.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
from fastapi import Request
from starlette.responses import JSONResponse, Response

from lumiku_common.auth import User
from lumiku_common.errors import AppError
from lumiku_common.internal import InternalClient
from lumiku_common.logs import get_logger
from lumiku_gateway.proxy import request_headers
from lumiku_gateway.routes import APP

log = get_logger(__name__)

_LIST = re.compile(rf"^{APP}/projects$")
_ONE = re.compile(rf"^{APP}/projects/(?P<id>[^/]+)$")
AvatarsByProject = dict[str, list[dict[str, Any]]]


class ProjectComposer:
    def __init__(self, avatars: InternalClient, per_project_in_list: int, per_project_in_detail: int):
        self.avatars = avatars
        self.per_project_in_list, self.per_project_in_detail = per_project_in_list, per_project_in_detail

    @staticmethod
    def applies(request: Request) -> bool:
        return request.method == "GET" and bool(_LIST.match(request.url.path) or _ONE.match(request.url.path))

    async def respond(self, projects: httpx.AsyncClient, request: Request, user: User) -> Response:
        one = _ONE.match(request.url.path)
        if one is None:
            return await self._list(projects, request, user)
        return await self._one(projects, request, user, one["id"])

    async def _list(self, projects: httpx.AsyncClient, request: Request, user: User) -> Response:
        upstream = await self._get_projects(projects, request)
        if upstream.status_code != 200:
            return _passthrough(upstream)
        body = upstream.json()
        ids = [p["id"] for p in body["projects"]]
        avatars = await self._avatars(user.id, ids, self.per_project_in_list)
        for project in body["projects"]:
            project["avatars"] = (avatars or {}).get(project["id"], [])
        return _json(body, avatars is None)

    async def _one(self, projects: httpx.AsyncClient, request: Request, user: User, project_id: str) -> Response:
        # Both asked at once: the avatars call does not wait for the project's.
        upstream, avatars = await asyncio.gather(
            self._get_projects(projects, request), self._avatars(user.id, [project_id], self.per_project_in_detail)
        )
        if upstream.status_code != 200:
            return Response(upstream.content, upstream.status_code, media_type="application/json")
        body = upstream.json()
        body["project"]["avatars"] = (avatars or {}).get(project_id, [])
        return _json(body, avatars is None)

    @staticmethod
    async def _get_projects(projects: httpx.AsyncClient, request: Request) -> httpx.Response:
        return await projects.get(request.url.path, params=request.url.query, headers=request_headers(request))

    async def _avatars(self, user_id: str, project_ids: list[str], limit: int) -> AvatarsByProject | None:
        if not project_ids:
            return {}
        try:
            response = await self.avatars.request(
                "GET",
                "/internal/avatars/by-projects",
                params={"userId": user_id, "projectIds": ",".join(project_ids), "limitPerProject": limit},
            )
            response.raise_for_status()
            result: AvatarsByProject = response.json()["avatars"]
            return result
        except (AppError, httpx.HTTPError, KeyError, ValueError) as exc:
            log.warning("composition_degraded", service="avatars", error=repr(exc))
            return None


def _passthrough(upstream: httpx.Response) -> Response:
    return Response(upstream.content, upstream.status_code, media_type=upstream.headers.get("content-type"))


def _json(body: dict[str, Any], degraded: bool) -> JSONResponse:
    return JSONResponse(body, headers={"X-Composition-Degraded": "avatars"} if degraded else None)
