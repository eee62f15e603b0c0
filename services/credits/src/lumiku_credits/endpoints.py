from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lumiku_common.auth import AdminUser, CurrentUser, ServiceCaller
from lumiku_common.clients.credits import (
    HOLDS,
    CaptureRequest,
    CaptureResponse,
    ReleaseRequest,
    ReleaseResponse,
    ReserveRequest,
    ReserveResponse,
    capture_path,
    release_path,
)
from lumiku_common.db import DatabaseDep, DbSession
from lumiku_common.idempotency import Outcome
from lumiku_common.openapi import AUTHENTICATED, responses
from lumiku_common.routing import Router
from lumiku_common.schemas import Pagination
from lumiku_common.service import part
from lumiku_credits import export, service
from lumiku_credits.schemas import (
    BalanceResponse,
    EntryOut,
    GrantRequest,
    GrantResponse,
    HistoryParams,
    TransactionsResponse,
)
from lumiku_credits.settings import CreditsSettings

router = Router(prefix="/api/credits", tags=["credits"], responses=AUTHENTICATED)
internal = Router(tags=["internal"], include_in_schema=False)


Settings = Annotated[CreditsSettings, Depends(part(CreditsSettings))]


def _respond(outcome: Outcome) -> JSONResponse:
    return outcome.response()


def _wants_csv(request: Request, params: HistoryParams) -> bool:
    if params.format is not None:
        return params.format == "csv"
    return "text/csv" in request.headers.get("accept", "").lower()


@router.get("/balance", response_model=BalanceResponse)
async def balance(user: CurrentUser, session: DbSession, settings: Settings) -> BalanceResponse:
    return await service.get_balance(session, settings, user.id)


@router.get(
    "/transactions",
    response_model=TransactionsResponse,
    responses={**responses(400), 200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def transactions(
    request: Request,
    user: CurrentUser,
    session: DbSession,
    db: DatabaseDep,
    settings: Settings,
    params: Annotated[HistoryParams, Query()],
) -> TransactionsResponse | StreamingResponse:
    """Newest first. `?format=csv` (or `Accept: text/csv`) streams every matching row, ignoring pages."""
    if _wants_csv(request, params):
        await service.ensure_wallet(session, settings, user.id)
        return StreamingResponse(
            export.csv_lines(db, user.id, params),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="credit-transactions.csv"'},
        )
    entries, total = await service.history(session, settings, user.id, params)
    return TransactionsResponse(
        transactions=[EntryOut.model_validate(e) for e in entries],
        pagination=Pagination.of(params.page, params.limit, total),
    )


@router.post("/grants", response_model=GrantResponse, status_code=201, responses=responses(400, 402, 403, 409))
async def grant(admin: AdminUser, session: DbSession, settings: Settings, body: GrantRequest) -> JSONResponse:
    return _respond(await service.grant(session, settings, body, granted_by=f"admin:{admin.id}"))


@internal.post(HOLDS, response_model=ReserveResponse, status_code=201)
async def reserve(_: ServiceCaller, session: DbSession, settings: Settings, body: ReserveRequest) -> JSONResponse:
    return _respond(await service.reserve(session, settings, body))


@internal.post(capture_path("{hold_id}"), response_model=CaptureResponse)
async def capture(_: ServiceCaller, session: DbSession, hold_id: str, body: CaptureRequest) -> JSONResponse:
    return _respond(await service.capture(session, hold_id, body))


@internal.post(release_path("{hold_id}"), response_model=ReleaseResponse)
async def release(_: ServiceCaller, session: DbSession, hold_id: str, body: ReleaseRequest) -> JSONResponse:
    return _respond(await service.release(session, hold_id, body))
