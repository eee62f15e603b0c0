from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query, Request, Response

from lumiku_avatars import service
from lumiku_avatars.dependencies import JanitorDep, MediaDep, WorkflowsDep
from lumiku_avatars.form import IMAGE_FIELD, read_preview_body, read_upload_form
from lumiku_avatars.schemas import (
    AvatarDetailResponse,
    AvatarFilters,
    AvatarListResponse,
    AvatarOut,
    AvatarResponse,
    AvatarsByProjectOut,
    AvatarUpdate,
    AvatarUploadFields,
    AvatarWithProject,
    DeletedResponse,
    SavePreviewRequest,
    StatsResponse,
)
from lumiku_avatars.workflows import Created
from lumiku_common.auth import CurrentUser, ServiceCaller
from lumiku_common.clients.avatars import (
    BY_PROJECTS,
    GENERATED,
    PREVIEW_IMAGES,
    AvatarOwner,
    AvatarsByProject,
    ByProjectsQuery,
    GeneratedAvatarRequest,
    GeneratedAvatarResponse,
    PreviewImage,
    PreviewImageRequest,
    SettleGeneratedRequest,
    owner_path,
    settle_path,
)
from lumiku_common.db import DatabaseDep, DbSession
from lumiku_common.idempotency import REPLAYABLE, IdempotencyKeyHeader, replayed_headers
from lumiku_common.media import MediaUrls
from lumiku_common.openapi import AUTHENTICATED, responses
from lumiku_common.routing import Router
from lumiku_common.schemas import PageParams, Pagination, json_response

APP = "/api/apps/avatar-creator"
router = Router(prefix=APP, tags=["avatars"], responses=AUTHENTICATED)
internal = Router(tags=["internal"], include_in_schema=False)


def _request_body(media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for a body these endpoints parse themselves (streamed, capped), from the model that validates it."""
    return {"requestBody": {"required": True, "content": {media_type: {"schema": schema}}}}


def _upload_form_schema() -> dict[str, Any]:
    schema = AvatarUploadFields.model_json_schema(by_alias=True)
    image = {"type": "string", "format": "binary", "description": "JPEG, PNG or WebP, max 10MB"}
    schema["properties"] = {IMAGE_FIELD: image, **schema["properties"]}
    schema["required"] = [IMAGE_FIELD, *schema.get("required", [])]
    return schema


def _created(created: Created, media: MediaUrls, message: str) -> Response:
    answer = AvatarResponse(avatar=AvatarOut.of(created.avatar, media), message=message)
    return json_response(answer, 201, replayed_headers(created.replayed))


@router.post(
    "/projects/{project_id}/avatars",
    response_model=AvatarResponse,
    status_code=201,
    responses={**responses(400, 402, 404, 409, 413), 201: REPLAYABLE},
    openapi_extra=_request_body("multipart/form-data", _upload_form_schema()),
)
async def upload_avatar(
    request: Request,
    user: CurrentUser,
    workflows: WorkflowsDep,
    media: MediaDep,
    project_id: str,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Multipart upload, parsed while it streams in (not through FastAPI's spooling form parser)."""
    form = await read_upload_form(request, workflows.settings.max_upload_bytes)
    created = await workflows.upload(user.id, project_id, form, idempotency_key)
    return _created(created, media, "Avatar created successfully")


@router.post(
    "/projects/{project_id}/avatars/save-preview",
    response_model=AvatarResponse,
    status_code=201,
    responses={**responses(400, 402, 404, 409, 413), 201: REPLAYABLE},
    openapi_extra=_request_body("application/json", SavePreviewRequest.model_json_schema(by_alias=True)),
)
async def save_preview(
    request: Request,
    user: CurrentUser,
    workflows: WorkflowsDep,
    media: MediaDep,
    project_id: str,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Saves an AI preview (JSON body, see SavePreviewRequest) as an avatar for 15 credits."""
    body = await read_preview_body(request, workflows.settings.max_upload_bytes)
    created = await workflows.save_preview(user.id, project_id, body, idempotency_key)
    return _created(created, media, "Avatar saved successfully")


@router.get("/avatars", response_model=AvatarListResponse, responses=responses(400))
async def list_avatars(
    user: CurrentUser,
    session: DbSession,
    media: MediaDep,
    page: Annotated[PageParams, Query()],
    filters: Annotated[AvatarFilters, Query()],
) -> AvatarListResponse:
    avatars, total = await service.list_avatars(session, user.id, filters, page.offset, page.limit)
    return AvatarListResponse(
        avatars=[AvatarOut.of(a, media) for a in avatars], pagination=Pagination.of(page.page, page.limit, total)
    )


@router.get("/stats", response_model=StatsResponse)
async def avatar_stats(user: CurrentUser, session: DbSession, media: MediaDep) -> StatsResponse:
    """Totals, the newest uploads and the most used avatars of the caller (see AvatarStats)."""
    return StatsResponse(stats=await service.stats(session, user.id, media))


@router.get("/avatars/{avatar_id}", response_model=AvatarDetailResponse, responses=responses(404))
async def get_avatar(user: CurrentUser, workflows: WorkflowsDep, media: MediaDep, avatar_id: str) -> Response:
    avatar, project = await workflows.detail(user.id, avatar_id)
    return json_response(AvatarDetailResponse(avatar=AvatarWithProject.of(avatar, media, project=project)))


@router.put("/avatars/{avatar_id}", response_model=AvatarResponse, responses=responses(400, 404))
async def update_avatar(
    user: CurrentUser, session: DbSession, media: MediaDep, avatar_id: str, body: AvatarUpdate
) -> AvatarResponse:
    avatar = await service.update_avatar(session, user.id, avatar_id, body)
    return AvatarResponse(avatar=AvatarOut.of(avatar, media), message="Avatar updated successfully")


@router.delete("/avatars/{avatar_id}", response_model=DeletedResponse, responses=responses(404))
async def delete_avatar(user: CurrentUser, session: DbSession, janitor: JanitorDep, avatar_id: str) -> DeletedResponse:
    await service.delete_avatar(session, janitor, user.id, avatar_id)
    return DeletedResponse(message="Avatar deleted successfully")


@internal.get(BY_PROJECTS, response_model=AvatarsByProject)
async def avatars_by_projects(
    _: ServiceCaller, db: DatabaseDep, media: MediaDep, query: Annotated[ByProjectsQuery, Query()]
) -> Response:
    """The gateway's composition of projects with their avatars: the newest N of each, in one query."""
    grouped = await service.newest_by_project(db, query.user_id, query.ids, query.limit_per_project)
    avatars = {pid: [AvatarOut.of(a, media) for a in rows] for pid, rows in grouped.items()}
    return json_response(AvatarsByProjectOut(avatars=avatars))


@internal.get(owner_path("{avatar_id}"), response_model=AvatarOwner)
async def avatar_owner(_: ServiceCaller, session: DbSession, avatar_id: str) -> AvatarOwner:
    """Who owns the avatar (the usage service's fallback for avatars newer than its projection); 404 if none."""
    return await service.owner_of(session, avatar_id)


@internal.post(
    GENERATED, response_model=GeneratedAvatarResponse, status_code=201, responses=responses(400, 404, 410, 503)
)
async def create_generated(
    _: ServiceCaller, workflows: WorkflowsDep, media: MediaDep, body: GeneratedAvatarRequest, response: Response
) -> GeneratedAvatarResponse:
    """The generation service's image as an avatar, once per image id (200 with the same avatar on a retry)."""
    avatar, created = await workflows.create_generated(body)
    if not created:
        response.status_code = 200
    return GeneratedAvatarResponse(avatar=AvatarOut.of(avatar, media).model_dump(mode="json"), created=created)


@internal.post(settle_path("{image_id}"), response_model=GeneratedAvatarResponse, responses=responses(410))
async def settle_generated(
    _: ServiceCaller,
    workflows: WorkflowsDep,
    media: MediaDep,
    image_id: Annotated[str, Path(max_length=32)],
    body: SettleGeneratedRequest,
) -> GeneratedAvatarResponse:
    """The avatar the generation image became; 410 if none, and then a create of it still in flight is refused."""
    avatar = await workflows.settle_generated(body.user_id, body.project_id, image_id)
    return GeneratedAvatarResponse(avatar=AvatarOut.of(avatar, media).model_dump(mode="json"), created=False)


@internal.post(PREVIEW_IMAGES, response_model=PreviewImage)
async def preview_image(_: ServiceCaller, workflows: WorkflowsDep, body: PreviewImageRequest) -> PreviewImage:
    return await workflows.preview_image(body.image_base64)
