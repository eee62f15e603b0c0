from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from lumiku_common.clients.projects import ProjectInfo
from lumiku_common.schemas import CamelModel, CleanStr, Pagination, RequestModel

Name = Annotated[CleanStr, StringConstraints(min_length=1, max_length=100)]
Description = Annotated[CleanStr, StringConstraints(max_length=500)]


class ProjectCreate(RequestModel):
    name: Name
    description: Description | None = None


class ProjectUpdate(RequestModel):
    name: Name | None = None
    description: Description | None = None


class ProjectOut(ProjectInfo):
    """A project as this service answers it. The gateway adds `avatars` (its composed view), see
    lumiku_gateway.composition."""


class ProjectResponse(CamelModel):
    success: bool = True
    project: ProjectOut


class ProjectChangedResponse(ProjectResponse):
    message: str


class ProjectListResponse(CamelModel):
    success: bool = True
    projects: list[ProjectOut]
    pagination: Pagination


class DeletedResponse(CamelModel):
    success: bool = True
    message: str
