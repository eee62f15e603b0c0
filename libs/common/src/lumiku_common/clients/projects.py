"""Client of the projects service's ownership check, and its contract.

GET project_path(project id)?userId=U   (service token)
    200 ProjectInfo   when the project exists and belongs to U
    404 {"error": "Project not found"}   otherwise (another user's project is not revealed)
Any other answer (a 4xx we caused, a 5xx, a body we cannot read) is the upstream failing: 502, or 503 with
`Retry-After` when it says it is down; see lumiku_common.internal.
"""

from __future__ import annotations

from urllib.parse import quote

from pydantic import ValidationError

from lumiku_common.errors import NotFound
from lumiku_common.internal import BadGateway, InternalClient, unexpected
from lumiku_common.logs import get_logger
from lumiku_common.schemas import CamelModel, UtcDatetime

log = get_logger(__name__)

PROJECTS = "/internal/projects"
USER_ID_PARAM = "userId"


def project_path(project_id: str) -> str:
    return f"{PROJECTS}/{project_id}"


class ProjectNotFound(NotFound):
    message = "Project not found"


class ProjectInfo(CamelModel):
    id: str
    user_id: str
    name: str
    description: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ProjectsClient:
    def __init__(self, client: InternalClient):
        self.client = client

    async def aclose(self) -> None:
        await self.client.aclose()

    async def ensure_owned(self, user_id: str, project_id: str) -> ProjectInfo:
        """The project, if it exists and belongs to `user_id`; 404 `Project not found` otherwise."""
        # The id is whatever the client put in its URL: one path segment, encoded, whatever it holds (a control
        # character made an invalid URL and a 500; `?`, `#` or `/` would have changed the request).
        path = project_path(quote(project_id, safe=""))
        response = await self.client.request("GET", path, params={USER_ID_PARAM: user_id})
        if response.status_code == 404:
            raise ProjectNotFound()
        if response.status_code != 200:
            raise unexpected(response)
        try:
            return ProjectInfo.model_validate_json(response.content)
        except ValidationError as exc:
            log.error("projects_answer_unreadable", error=str(exc)[:500])
            raise BadGateway() from exc
