"""Client of the avatars service's internal routes, and their contract.

GET BY_PROJECTS?userId=U&projectIds=a,b&limitPerProject=N   (service token)
    200 AvatarsByProject: the newest N avatars of each listed project of U, as the public API shows them
GET owner_path(avatar id)   (service token)
    200 AvatarOwner   when the avatar exists (usage's fallback when its projection has not seen it yet)
    404 {"error": "Avatar not found"}   otherwise (deleted, or never existed)
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lumiku_common.errors import NotFound, ServiceUnavailable
from lumiku_common.internal import InternalClient
from lumiku_common.schemas import CamelModel

BY_PROJECTS = "/internal/avatars/by-projects"
MAX_PROJECTS = 100

# An avatar exactly as `GET /avatars/:id` shows it (camelCase JSON): the gateway embeds it without re-reading.
AvatarJson = dict[str, Any]


class ByProjectsQuery(BaseModel):
    model_config = ConfigDict(validate_by_name=True)

    user_id: Annotated[str, Field(alias="userId", min_length=1, max_length=128)]
    project_ids: Annotated[str, Field(alias="projectIds", max_length=MAX_PROJECTS * 33)] = ""
    limit_per_project: Annotated[int, Field(alias="limitPerProject", ge=1, le=100)] = 10

    @field_validator("project_ids")
    @classmethod
    def _at_most_100(cls, value: str) -> str:
        if len(value.split(",")) > MAX_PROJECTS:
            raise ValueError(f"At most {MAX_PROJECTS} projectIds")
        return value

    @property
    def ids(self) -> list[str]:
        return list(dict.fromkeys(p for p in self.project_ids.split(",") if p))


class AvatarsByProject(CamelModel):
    avatars: dict[str, list[AvatarJson]]


# --- owner lookup -------------------------------------------------------------------------------------------

OWNERS = "/internal/avatars"


def owner_path(avatar_id: str) -> str:
    return f"{OWNERS}/{avatar_id}/owner"


class AvatarNotFound(NotFound):
    message = "Avatar not found"


class AvatarOwner(CamelModel):
    avatar_id: str
    user_id: str
    project_id: str


# --- the client ------------------------------------------------------------------------------------------


class AvatarsClient:
    def __init__(self, client: InternalClient):
        self.client = client

    async def newest_by_project(self, user_id: str, project_ids: list[str], per_project: int) -> AvatarsByProject:
        query = ByProjectsQuery(user_id=user_id, project_ids=",".join(project_ids), limit_per_project=per_project)
        response = await self.client.request("GET", BY_PROJECTS, params=query.model_dump(by_alias=True))
        if response.status_code != 200:
            raise ServiceUnavailable()
        return AvatarsByProject.model_validate_json(response.content)

    async def owner(self, avatar_id: str) -> AvatarOwner | None:
        """Who owns the avatar; None if it does not exist. ServiceUnavailable when avatars cannot say."""
        response = await self.client.request("GET", owner_path(quote(avatar_id, safe="")))
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ServiceUnavailable()
        return AvatarOwner.model_validate_json(response.content)

    async def aclose(self) -> None:
        await self.client.aclose()
