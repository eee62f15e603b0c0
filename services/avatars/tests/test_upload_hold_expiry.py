"""An upload whose credit hold expires before the avatar commits: credits would refuse its capture (work done
after the expiry), so no avatar is made; the client is told to try again."""

from __future__ import annotations

import asyncio

from avatars_samples import jpeg


async def test_an_upload_that_commits_after_its_hold_expired_is_not_kept_unpaid(suite, monkeypatch):
    """Processing that outlasts the hold (`credit_hold_ttl_seconds`, 300 s: a long wait for decode memory, a slow
    object store) is checked at the commit: 503, nothing kept, the hold released."""
    monkeypatch.setattr(suite.settings, "credit_hold_ttl_seconds", 1)
    storage = suite.workflows.storage
    real_put = storage.put

    async def slow_put(*args, **kwargs):
        await asyncio.sleep(1.5)
        return await real_put(*args, **kwargs)

    monkeypatch.setattr(storage, "put", slow_put)
    user, headers = suite.user()
    project = await suite.project(headers)
    response = await suite.upload(headers, project, jpeg())
    monkeypatch.undo()
    await asyncio.sleep(1.0)  # the capture reaches credits
    assert response.status_code == 503, response.text
    assert (await suite.rows(user), (await suite.balance(headers))["balance"]) == (0, 100)
