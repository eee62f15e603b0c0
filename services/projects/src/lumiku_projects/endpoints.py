from __future__ import annotations

from typing import Annotated

from fastapi import Query
from starlette.responses import Response

from lumiku_common.auth import CurrentUser, ServiceCaller
from lumiku_common.clients.projects import USER_ID_PARAM, ProjectInfo, project_path
from lumiku_common.db import DatabaseDep, DbSession, DriverWorkDep
from lumiku_common.idempotency import REPLAYABLE, IdempotencyKeyHeader
from lumiku_common.openapi import AUTHENTICATED, responses
from lumiku_common.routing import Router
from lumiku_common.schemas import PageParams, Pagination, json_response
from lumiku_projects import service
from lumiku_projects.schemas import (
    DeletedResponse,
    ProjectChangedResponse,
    ProjectCreate,
    ProjectListResponse,
    ProjectResponse,
    ProjectUpdate,
)

router = Router(prefix="/api/apps/avatar-creator/projects", tags=["projects"], responses=AUTHENTICATED)
internal = Router(tags=["internal"], include_in_schema=False)


@router.get("", response_model=ProjectListResponse, responses=responses(400))
async def list_projects(user: CurrentUser, db: DatabaseDep, page: Annotated[PageParams, Query()]) -> Response:
    projects, total = await service.list_projects(db, user.id, page.offset, page.limit)
    return json_response(ProjectListResponse(projects=projects, pagination=Pagination.of(page.page, page.limit, total)))


@router.post(
    "", response_model=ProjectChangedResponse, status_code=201, responses={**responses(400, 409), 201: REPLAYABLE}
)
async def create_project(
    user: CurrentUser, session: DbSession, body: ProjectCreate, idempotency_key: IdempotencyKeyHeader = None
) -> Response:
    return (await service.create_project(session, user.id, body, idempotency_key)).response()


@router.get("/{project_id}", response_model=ProjectResponse, responses=responses(404))
async def get_project(user: CurrentUser, db: DatabaseDep, project_id: str) -> Response:
    return json_response(ProjectResponse(project=await service.read_project(db, user.id, project_id)))


@router.put("/{project_id}", response_model=ProjectChangedResponse, responses=responses(400, 404))
async def update_project(user: CurrentUser, work: DriverWorkDep, project_id: str, body: ProjectUpdate) -> Response:
    project = await service.update_project(work, user.id, project_id, body)
    updated = ProjectChangedResponse(project=project, message="Project updated successfully")
    return json_response(updated)


@router.delete("/{project_id}", response_model=DeletedResponse, responses=responses(404))
async def delete_project(user: CurrentUser, session: DbSession, project_id: str) -> DeletedResponse:
    await service.delete_project(session, user.id, project_id)
    return DeletedResponse(message="Project deleted successfully")


@internal.get(project_path("{project_id}"), response_model=ProjectInfo)
async def get_project_internal(
    _: ServiceCaller, db: DatabaseDep, project_id: str, user_id: Annotated[str, Query(alias=USER_ID_PARAM)]
) -> Response:
    """Ownership check for other services: 404 unless the project exists and belongs to `userId`."""
    return json_response(await service.read_project(db, user_id, project_id))
