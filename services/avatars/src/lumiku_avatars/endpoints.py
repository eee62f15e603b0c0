from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from lumiku_avatars import service
from lumiku_avatars.form import read_preview_body, read_upload_form
from lumiku_avatars.models import Avatar
from lumiku_avatars.schemas import (
    AvatarDetailResponse,
    AvatarFilters,
    AvatarListResponse,
    AvatarOut,
    AvatarResponse,
    AvatarsByProject,
    AvatarStats,
    AvatarUpdate,
    AvatarWithProject,
    DeletedResponse,
    SavePreviewRequest,
    StatsResponse,
)
from lumiku_avatars.uploads import Uploads
from lumiku_common.auth import CurrentUser, ServiceCaller
from lumiku_common.clients.projects import ProjectsClient
from lumiku_common.db import DbSession
from lumiku_common.errors import BadRequest
from lumiku_common.media import MediaUrls
from lumiku_common.schemas import PageParams, Pagination

APP = "/api/apps/avatar-creator"
router = APIRouter(prefix=APP, tags=["avatars"])
internal = APIRouter(prefix="/internal/avatars", tags=["internal"], include_in_schema=False)

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "name"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "JPEG, PNG or WebP, max 10MB"},
                        "name": {"type": "string", "minLength": 1, "maxLength": 100},
                        "gender": {"type": "string", "enum": ["male", "female", "unisex"]},
                        "ageRange": {"type": "string", "enum": ["young", "adult", "mature"]},
                        "style": {
                            "type": "string",
                            "enum": ["casual", "formal", "sporty", "professional", "traditional"],
                        },
                        "ethnicity": {"type": "string", "maxLength": 50},
                        "bodyType": {"type": "string", "enum": ["half_body", "full_body"]},
                    },
                }
            }
        },
    }
}


def out(request: Request, avatar: Avatar) -> AvatarOut:
    media: MediaUrls = request.app.state.media
    return AvatarOut.model_validate(
        {
            **{c: getattr(avatar, c) for c in AvatarOut.model_fields if hasattr(avatar, c)},
            "base_image_url": media.url(avatar.base_image_key),
            "thumbnail_url": media.url(avatar.thumbnail_key),
        }
    )


@router.post(
    "/projects/{project_id}/avatars", response_model=AvatarResponse, status_code=201, openapi_extra=_UPLOAD_BODY
)
async def upload_avatar(request: Request, user: CurrentUser, project_id: str) -> AvatarResponse:
    """Multipart upload, parsed while it streams in (not through FastAPI's spooling form parser)."""
    uploads: Uploads = request.app.state.uploads
    form = await read_upload_form(request, uploads.settings.max_upload_bytes)
    avatar = await uploads.upload(user.id, project_id, form)
    return AvatarResponse(avatar=out(request, avatar), message="Avatar created successfully")


_PREVIEW_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SavePreviewRequest.model_json_schema(by_alias=True)}},
    }
}


@router.post(
    "/projects/{project_id}/avatars/save-preview",
    response_model=AvatarResponse,
    status_code=201,
    openapi_extra=_PREVIEW_BODY,
)
async def save_preview(request: Request, user: CurrentUser, project_id: str) -> AvatarResponse:
    """Saves an AI preview (JSON body, see SavePreviewRequest) as an avatar for 15 credits."""
    uploads: Uploads = request.app.state.uploads
    body = await read_preview_body(request, uploads.settings.max_upload_bytes)
    avatar = await uploads.save_preview(user.id, project_id, body)
    return AvatarResponse(avatar=out(request, avatar), message="Avatar saved successfully")


@router.get("/avatars", response_model=AvatarListResponse)
async def list_avatars(
    request: Request,
    user: CurrentUser,
    session: DbSession,
    page: Annotated[PageParams, Query()],
    filters: Annotated[AvatarFilters, Query()],
) -> AvatarListResponse:
    avatars, total = await service.list_avatars(session, user.id, filters, page.offset, page.limit)
    return AvatarListResponse(
        avatars=[out(request, a) for a in avatars], pagination=Pagination.of(page.page, page.limit, total)
    )


@router.get("/stats", response_model=StatsResponse)
async def avatar_stats(request: Request, user: CurrentUser, session: DbSession) -> StatsResponse:
    """Totals, the newest uploads and the most used avatars of the caller (see AvatarStats)."""
    stats = await service.stats(session, user.id)
    for listed in ("recent_uploads", "top_used"):
        stats[listed] = [out(request, a) for a in stats[listed]]  # type: ignore[attr-defined]
    return StatsResponse(stats=AvatarStats.model_validate(stats))


@router.get("/avatars/{avatar_id}", response_model=AvatarDetailResponse)
async def get_avatar(request: Request, user: CurrentUser, session: DbSession, avatar_id: str) -> AvatarDetailResponse:
    avatar = await service.get_avatar(session, user.id, avatar_id)
    projects: ProjectsClient = request.app.state.uploads.projects
    project = await projects.ensure_owned(user.id, avatar.project_id)
    project.pop("avatars", None)
    detail = AvatarWithProject(**out(request, avatar).model_dump(), project=project)
    return AvatarDetailResponse(avatar=detail)


@router.put("/avatars/{avatar_id}", response_model=AvatarResponse)
async def update_avatar(
    request: Request, user: CurrentUser, session: DbSession, avatar_id: str, body: AvatarUpdate
) -> AvatarResponse:
    avatar = await service.update_avatar(session, user.id, avatar_id, body)
    return AvatarResponse(avatar=out(request, avatar), message="Avatar updated successfully")


@router.delete("/avatars/{avatar_id}", response_model=DeletedResponse)
async def delete_avatar(request: Request, user: CurrentUser, session: DbSession, avatar_id: str) -> DeletedResponse:
    await service.delete_avatar(session, request.app.state.janitor, user.id, avatar_id)
    return DeletedResponse(message="Avatar deleted successfully")


@internal.get("/by-projects", response_model=AvatarsByProject)
async def avatars_by_projects(
    request: Request,
    _: ServiceCaller,
    session: DbSession,
    user_id: Annotated[str, Query(alias="userId", min_length=1)],
    project_ids: Annotated[str, Query(alias="projectIds")] = "",
    limit_per_project: Annotated[int, Query(alias="limitPerProject", ge=1, le=100)] = 10,
) -> AvatarsByProject:
    """The gateway's composition of projects with their avatars: the newest N of each, in one query."""
    ids = list(dict.fromkeys(p for p in project_ids.split(",") if p))
    if len(ids) > 100:
        raise BadRequest("At most 100 projectIds")
    grouped = await service.newest_by_project(session, user_id, ids, limit_per_project)
    return AvatarsByProject(avatars={pid: [out(request, a) for a in avatars] for pid, avatars in grouped.items()})
