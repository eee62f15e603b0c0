"""The ownership check other services call: service token required, another user's project is 404."""

from __future__ import annotations

import httpx

from lumiku_common.auth import SERVICE_TOKEN_HEADER, ServiceTokens
from lumiku_devtools.testing import prepare_database, running, token_for
from lumiku_projects.main import create_app

from .conftest import MIGRATIONS


async def test_internal_ownership_check(settings, alice):
    await prepare_database(settings, MIGRATIONS)
    async with running(create_app(settings)) as service:
        created = await service.post("/api/apps/avatar-creator/projects", json={"name": "Mine"}, headers=alice)
        pid = created.json()["project"]["id"]
        good = {SERVICE_TOKEN_HEADER: ServiceTokens(settings.service_token_secret, "avatars").token()}

        owned = await service.get(f"/internal/projects/{pid}", params={"userId": "alice"}, headers=good)
        assert owned.status_code == 200 and owned.json()["id"] == pid

        for user in ("bob", ""):
            other = await service.get(f"/internal/projects/{pid}", params={"userId": user}, headers=good)
            assert other.status_code == 404
        missing_user = await service.get(f"/internal/projects/{pid}", headers=good)
        assert missing_user.status_code == 400

        assert (await _get(service, pid, {})).status_code == 401
        user_token = {SERVICE_TOKEN_HEADER: token_for(settings, "alice")}
        assert (await _get(service, pid, user_token)).status_code == 401
        forged = {SERVICE_TOKEN_HEADER: ServiceTokens(settings.jwt_secret, "avatars").token()}
        assert (await _get(service, pid, forged)).json() == {"error": "Invalid token"}
        as_user = {"Authorization": good[SERVICE_TOKEN_HEADER].join(["Bearer ", ""])}
        assert (await service.get(f"/api/apps/avatar-creator/projects/{pid}", headers=as_user)).status_code == 401


async def _get(service: httpx.AsyncClient, pid: str, headers: dict[str, str]) -> httpx.Response:
    return await service.get(f"/internal/projects/{pid}", params={"userId": "alice"}, headers=headers)
