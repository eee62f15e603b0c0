"""Uploads while the services they call fail: credits or projects unreachable, refusing, or answering what the
contract does not allow. Through the real gateway and avatars service; only the other service is replaced, by
a dead port or a stand-in ASGI app behind the same client code (lumiku_common.clients).

What the client sees (spec: a dependency that is down is 503 with Retry-After, an upstream that failed 502):
a 4xx other than 402 from credits is a request *we* built and it refused, so 502, never the caller's 4xx."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import pytest
from avatars_samples import jpeg, png
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from lumiku_common.auth import ServiceTokens
from lumiku_common.clients.credits import CreditsClient
from lumiku_common.clients.projects import ProjectsClient
from lumiku_common.internal import InternalClient
from lumiku_devtools.testing import free_port

APP = "/api/apps/avatar-creator"


def internal(suite, transport: httpx.AsyncBaseTransport | None, url: str = "http://stand-in") -> InternalClient:
    return InternalClient(url, ServiceTokens(suite.settings.service_token_secret, "avatars"), transport=transport)


def answering(make: Callable[[], Response]) -> httpx.ASGITransport:
    """A stand-in service that answers every request with `make()`."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await make()(scope, receive, send)

    return httpx.ASGITransport(app=app)


def replace_credits(suite, monkeypatch, client: InternalClient) -> None:
    monkeypatch.setattr(suite.workflows, "credits", CreditsClient(client))


def replace_projects(suite, monkeypatch, client: InternalClient) -> None:
    monkeypatch.setattr(suite.workflows, "projects", ProjectsClient(client))


def unreachable(suite) -> InternalClient:
    return internal(suite, None, f"http://127.0.0.1:{free_port()}")  # nothing listens there


async def test_credits_unreachable_is_503_with_retry_after_and_changes_nothing(suite, monkeypatch):
    user, headers = suite.user()
    project = await suite.project(headers)
    replace_credits(suite, monkeypatch, unreachable(suite))
    response = await suite.upload(headers, project, jpeg())
    assert (response.status_code, response.json()) == (503, {"error": "Service unavailable"})
    assert response.headers["retry-after"] == "5"
    monkeypatch.undo()  # the balance below is read through the real credits service
    await suite.assert_untouched(user, headers)


async def test_projects_unreachable_is_503_with_retry_after_and_changes_nothing(suite, monkeypatch):
    user, headers = suite.user()
    project = await suite.project(headers)
    replace_projects(suite, monkeypatch, unreachable(suite))
    response = await suite.upload(headers, project, jpeg())
    assert (response.status_code, response.headers["retry-after"]) == (503, "5")
    await suite.assert_untouched(user, headers)


BAD_GATEWAY = (502, {"error": "Bad gateway"}, None)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (lambda: JSONResponse({"error": "Validation error", "details": []}, 400), BAD_GATEWAY),
        (lambda: JSONResponse({"error": "Unauthorized"}, 401), BAD_GATEWAY),  # e.g. a wrong SERVICE_TOKEN_SECRET
        (lambda: JSONResponse({"error": "Not found"}, 404), BAD_GATEWAY),
        (lambda: JSONResponse({"error": "Idempotency key reused"}, 409), BAD_GATEWAY),
        (lambda: JSONResponse({"error": "Hold expired"}, 410), BAD_GATEWAY),
        (lambda: JSONResponse({"error": "Internal server error"}, 500), BAD_GATEWAY),
        (lambda: Response("<html>proxy error</html>", 200), BAD_GATEWAY),  # a 200 we cannot read
        (lambda: JSONResponse({"hold": {"id": 1}}, 201), BAD_GATEWAY),  # a 201 off the contract
        (lambda: JSONResponse({"error": "x"}, 503, {"Retry-After": "7"}), (503, {"error": "Service unavailable"}, "7")),
        (lambda: JSONResponse({"error": "x"}, 429), (503, {"error": "Service unavailable"}, "5")),
        (
            lambda: JSONResponse({"error": "Insufficient credits", "required": 10, "current": 3}, 402),
            (402, {"error": "Insufficient credits", "required": 10, "current": 3}, None),
        ),
    ],
    ids=["400", "401", "404", "409", "410", "500", "200-html", "201-off-contract", "503", "429", "402"],
)
async def test_credits_answers_on_reserve_and_what_the_client_sees(suite, monkeypatch, answer, expected):
    user, headers = suite.user()
    project = await suite.project(headers)
    replace_credits(suite, monkeypatch, internal(suite, answering(answer)))
    response = await suite.upload(headers, project, jpeg())
    status, body, retry_after = expected
    assert (response.status_code, response.json()) == (status, body)
    assert response.headers.get("retry-after") == retry_after
    monkeypatch.undo()
    await suite.assert_untouched(user, headers)


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (lambda: JSONResponse({"error": "Unauthorized"}, 401), 502),
        (lambda: JSONResponse({"error": "Internal server error"}, 500), 502),
        (lambda: JSONResponse({"id": "p"}, 200), 502),  # fields missing: not a ProjectInfo
        (lambda: JSONResponse({"error": "Service unavailable"}, 503), 503),
    ],
    ids=["401", "500", "200-off-contract", "503"],
)
async def test_projects_answers_other_than_200_or_404(suite, monkeypatch, answer, status):
    user, headers = suite.user()
    project = await suite.project(headers)
    replace_projects(suite, monkeypatch, internal(suite, answering(answer)))
    response = await suite.upload(headers, project, jpeg())
    assert response.status_code == status
    assert response.json()["error"] == ("Bad gateway" if status == 502 else "Service unavailable")
    await suite.assert_untouched(user, headers)


async def test_save_preview_maps_credits_refusal_the_same_way(suite, monkeypatch):
    user, headers = suite.user()
    project = await suite.project(headers)
    replace_credits(suite, monkeypatch, internal(suite, answering(lambda: JSONResponse({"error": "?"}, 422))))
    body = {"name": "Preview", "imageBase64": base64.b64encode(png(64, 64)).decode()}
    response = await suite.api.post(f"{APP}/projects/{project}/avatars/save-preview", json=body, headers=headers)
    assert (response.status_code, response.json()) == BAD_GATEWAY[:2]
    monkeypatch.undo()
    await suite.assert_untouched(user, headers)
