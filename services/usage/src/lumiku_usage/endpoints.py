from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lumiku_common.auth import CurrentUser
from lumiku_common.db import DatabaseDep, DbSession
from lumiku_common.idempotency import REPLAYABLE, IdempotencyKeyHeader
from lumiku_common.openapi import AUTHENTICATED, responses
from lumiku_common.routing import Router
from lumiku_usage import export, service
from lumiku_usage.dependencies import WorkflowsDep
from lumiku_usage.schemas import (
    AvatarId,
    HistoryParams,
    HistoryResponse,
    TrackUsageRequest,
    TrackUsageResponse,
    UsageAnalytics,
    UsageQuery,
)

APP = "/api/apps/avatar-creator"
router = Router(prefix=APP, tags=["usage"], responses=AUTHENTICATED)


@router.post(
    "/track-usage",
    response_model=TrackUsageResponse,
    status_code=201,
    responses={**responses(400, 404, 409), 201: REPLAYABLE},
)
async def track_usage(
    user: CurrentUser, workflows: WorkflowsDep, body: TrackUsageRequest, idempotency_key: IdempotencyKeyHeader = None
) -> JSONResponse:
    """Records one use of the caller's avatar (spec §11.1); the avatar's `usageCount` follows."""
    return (await workflows.track(user.id, body, idempotency_key)).response()


@router.get("/avatars/{avatar_id}/usage-history", response_model=HistoryResponse, responses=responses(400, 404))
async def usage_history(
    user: CurrentUser, workflows: WorkflowsDep, avatar_id: AvatarId, params: Annotated[HistoryParams, Query()]
) -> HistoryResponse:
    """Newest first, `limit` (≤ 500, default 100) per page, `nextCursor` for the next; the summary covers the
    avatar's whole history whatever the page and filters."""
    return await workflows.history(user.id, avatar_id, params)


def _wants_csv(request: Request, query: UsageQuery) -> bool:
    if query.format is not None:
        return query.format == "csv"
    return "text/csv" in request.headers.get("accept", "").lower()


@router.get(
    "/usage",
    response_model=UsageAnalytics,
    responses={**responses(400), 200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def usage(
    request: Request,
    user: CurrentUser,
    session: DbSession,
    db: DatabaseDep,
    query: Annotated[UsageQuery, Query()],
) -> UsageAnalytics | StreamingResponse:
    """The caller's usage across avatars: a time series in UTC buckets, totals per app, top avatars.
    `?format=csv` (or `Accept: text/csv`) streams the raw rows of the range instead."""
    if _wants_csv(request, query):
        since, until = service.window(query, datetime.now(UTC))
        return StreamingResponse(
            export.csv_lines(db, user.id, since, until, query.app_id, query.avatar_id),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="avatar-usage.csv"'},
        )
    return await service.analytics(session, user.id, query)
