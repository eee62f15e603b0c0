from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Query
from fastapi.responses import JSONResponse, StreamingResponse

from lumiku_common.auth import CurrentUser
from lumiku_common.db import DbSession
from lumiku_common.idempotency import REPLAYABLE, IdempotencyKeyHeader, replayed_headers
from lumiku_common.openapi import AUTHENTICATED, responses
from lumiku_common.routing import Router
from lumiku_common.schemas import PageParams, Pagination
from lumiku_generation import service
from lumiku_generation.dependencies import SettingsDep, WorkflowsDep
from lumiku_generation.schemas import (
    GeneratedResponse,
    GenerateRequest,
    GenerationListResponse,
    GenerationOut,
    GenerationResponse,
    PreviewRequest,
    PreviewResponse,
)
from lumiku_generation.workflows import GenerationCanceled, GenerationFailed

APP = "/api/apps/avatar-creator"
router = Router(prefix=APP, tags=["generation"], responses=AUTHENTICATED)

_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "model": GenerationResponse,
        "description": "Queued or still running (`Prefer: respond-async`, or the wait ran out): follow `Location`",
        "headers": {"Location": {"description": "The generation's URL", "schema": {"type": "string"}}},
    }
}
_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `queued`, `running`, `image` (each avatar as it lands), `image_failed`, "
        "then one terminal event (`succeeded`, `partially_succeeded`, `failed` or `canceled`) and the end of the "
        "stream. Each event's `id` resumes the stream after it (`Last-Event-ID`).",
        # One event: `data` is JSON text ({"generation": ...} for status events; the avatar for `image`).
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {"id": {"type": "string"}, "event": {"type": "string"}, "data": {"type": "string"}},
                }
            }
        },
    }
}


def _location(generation: GenerationOut) -> str:
    return f"{APP}/generations/{generation.id}"


def _accepted(generation: GenerationOut, headers: dict[str, str] | None) -> JSONResponse:
    body = GenerationResponse(generation=generation).model_dump(mode="json", by_alias=True)
    return JSONResponse(body, status_code=202, headers={"Location": _location(generation), **(headers or {})})


def _wants_async(prefer: str | None) -> bool:
    return prefer is not None and any(p.strip().lower() == "respond-async" for p in prefer.split(","))


@router.post(
    "/projects/{project_id}/avatars/generate",
    response_model=GeneratedResponse,
    status_code=201,
    responses={
        **responses(400, 402, 404, 409),
        201: REPLAYABLE,
        202: {**_ACCEPTED[202], "headers": {**_ACCEPTED[202]["headers"], **REPLAYABLE["headers"]}},
    },
)
async def generate(
    user: CurrentUser,
    workflows: WorkflowsDep,
    settings: SettingsDep,
    project_id: str,
    body: GenerateRequest,
    prefer: Annotated[str | None, Header(max_length=200)] = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Spec §3.2: `count` images (1-5) for 15 + 10 x (count - 1) credits, reserved up front and charged per
    image that becomes an avatar. Waits for the job (up to GENERATION_SYNC_WAIT_S) unless `Prefer: respond-async`;
    409 if it was canceled meanwhile, 502 if the provider gave no image (nothing charged). A retry with the
    first request's `Idempotency-Key` answers that request's job as it stands now, failed or canceled included
    (`Idempotent-Replayed: true`), and reserves nothing; another try needs another key."""
    submitted = await workflows.submit(user.id, project_id, body, idempotency_key)
    headers = replayed_headers(submitted.replayed)
    if _wants_async(prefer):
        return _accepted(submitted.generation, headers)
    outcome = await workflows.wait(user.id, submitted.generation.id, settings.generation_sync_wait_s)
    if not outcome.finished:
        return _accepted(outcome.generation, headers)
    if outcome.generation.status == "canceled":
        raise GenerationCanceled(headers=headers)
    if not outcome.avatars:
        raise GenerationFailed(outcome.generation.error or "no image was produced", headers)
    answer = GeneratedResponse(avatar=outcome.avatars[0], avatars=outcome.avatars, generation=outcome.generation)
    return JSONResponse(answer.model_dump(mode="json", by_alias=True), status_code=201, headers=headers)


@router.post(
    "/projects/{project_id}/avatars/generate-preview",
    response_model=PreviewResponse,
    responses=responses(400, 404),
)
async def generate_preview(
    user: CurrentUser, workflows: WorkflowsDep, project_id: str, body: PreviewRequest
) -> PreviewResponse:
    """Spec §3.2 phase one: free, nothing stored; save it with save-preview."""
    return PreviewResponse(preview=await workflows.preview(user.id, project_id, body))


@router.get("/generations", response_model=GenerationListResponse, responses=responses(400))
async def list_generations(
    user: CurrentUser, session: DbSession, page: Annotated[PageParams, Query()]
) -> GenerationListResponse:
    """The caller's generations, newest first."""
    generations, total = await service.page(session, user.id, page.offset, page.limit)
    return GenerationListResponse(generations=generations, pagination=Pagination.of(page.page, page.limit, total))


@router.get("/generations/{generation_id}", response_model=GenerationResponse, responses=responses(404))
async def get_generation(user: CurrentUser, session: DbSession, generation_id: str) -> GenerationResponse:
    job = await service.get(session, user.id, generation_id)
    return GenerationResponse(generation=await service.out(session, job))


@router.get(
    "/generations/{generation_id}/events",
    response_class=StreamingResponse,
    responses={**responses(404), **_STREAM},
)
async def generation_events(
    user: CurrentUser,
    workflows: WorkflowsDep,
    generation_id: str,
    last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0, le=2**31 - 1)] = None,
) -> StreamingResponse:
    events = await workflows.stream(user.id, generation_id, last_event_id or 0)
    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


@router.post("/generations/{generation_id}/cancel", response_model=GenerationResponse, responses=responses(404))
async def cancel_generation(user: CurrentUser, workflows: WorkflowsDep, generation_id: str) -> GenerationResponse:
    """Once answered, nothing more is stored or charged; what is not yet charged is released. A finished
    generation is answered as it is."""
    return GenerationResponse(generation=await workflows.cancel(user.id, generation_id))
