from __future__ import annotations

from lumiku_common.errors import NotFound, ServiceUnavailable
from lumiku_common.internal import InternalClient


class ProjectNotFound(NotFound):
    message = "Project not found"


class ProjectsClient:
    def __init__(self, client: InternalClient):
        self.client = client

    async def ensure_owned(self, user_id: str, project_id: str) -> dict:
        """The project, if it exists and belongs to `user_id`; 404 `Project not found` otherwise."""
        response = await self.client.request("GET", f"/internal/projects/{project_id}", params={"userId": user_id})
        if response.status_code == 404:
            raise ProjectNotFound()
        if response.status_code != 200:
            raise ServiceUnavailable()
        project: dict = response.json()
        return project
