from __future__ import annotations

from typing import Any

from lumiku_common.schemas import CamelModel, Pagination, RequestModel, UtcDatetime, text

Name = text(1, 100)
Description = text(None, 500)


class ProjectCreate(RequestModel):
    name: Name  # type: ignore[valid-type]
    description: Description | None = None  # type: ignore[valid-type]


class ProjectUpdate(RequestModel):
    name: Name | None = None  # type: ignore[valid-type]
    description: Description | None = None  # type: ignore[valid-type]


class ProjectOut(CamelModel):
    id: str
    user_id: str
    name: str
    description: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime
    # Filled by the gateway, which composes projects with their avatars from the avatars service.
    avatars: list[dict[str, Any]] = []


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
