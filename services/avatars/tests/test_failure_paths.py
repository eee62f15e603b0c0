"""What an upload's undo, the object purge and the media route do when the database, the store or credits fail
at the worst moment. Failures are real where they can be: a PostgreSQL trigger, a TCP link to PostgreSQL that
loses the COMMIT's reply, an S3 bucket policy; the OS refusing one unlink is injected at `Path.unlink`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from avatars_samples import jpeg
from sqlalchemy import text

from lumiku_avatars.objects import object_keys
from lumiku_common.auth import ServiceTokens
from lumiku_common.clients.credits import CreditsClient, HoldExpired
from lumiku_common.db import Database
from lumiku_common.internal import InternalClient
from lumiku_common.media import MediaSigner
from lumiku_common.storage import S3Storage
from lumiku_devtools.testing import eventually

APP = "/api/apps/avatar-creator"


@contextlib.asynccontextmanager
async def avatars_refused_for(suite, user_id: str) -> AsyncIterator[None]:
    """A trigger that makes PostgreSQL itself fail the INSERT of this user's avatar (only theirs: the suite is
    shared). User ids here are ours (`user-<id>`), safe to inline in DDL."""
    assert re.fullmatch(r"user-[0-9a-z]+", user_id)
    name = user_id.replace("-", "_")
    async with suite.avatars_app.state.db.unit_of_work() as session:
        await session.execute(
            text(
                f"CREATE FUNCTION refuse_{name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.user_id = '{user_id}' THEN RAISE EXCEPTION 'disk full (test)'; END IF; RETURN NEW; END $$"
            )
        )
        await session.execute(
            text(f"CREATE TRIGGER refuse_{name} BEFORE INSERT ON avatars FOR EACH ROW EXECUTE FUNCTION refuse_{name}()")
        )
    try:
        yield
    finally:
        async with suite.avatars_app.state.db.unit_of_work() as session:
            await session.execute(text(f"DROP TRIGGER refuse_{name} ON avatars"))
            await session.execute(text(f"DROP FUNCTION refuse_{name}()"))


async def scheduled_deletions(suite, like: str = "%") -> list[str]:
    async with suite.avatars_app.state.db.sessions() as session:
        rows = await session.execute(
            text("SELECT key FROM object_deletions WHERE key LIKE :k ORDER BY key"), {"k": like}
        )
    return list(rows.scalars())


def user_prefix(user_id: str) -> str:
    return object_keys(user_id, "x", "", "")[0].rsplit("/", 2)[0] + "/"


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == event]


# --- the database fails the avatar's INSERT: nothing is left, the hold is released ----------------------


@pytest.mark.unhandled_errors  # PostgreSQL refusing the INSERT (not unreachable): our 500, logged as such
async def test_a_real_database_failure_leaves_nothing_and_releases_the_hold(suite):
    user, headers = suite.user()
    project = await suite.project(headers)
    async with avatars_refused_for(suite, user):
        response = await suite.upload(headers, project, jpeg())
    assert response.status_code == 500
    await suite.assert_untouched(user, headers)


@pytest.mark.unhandled_errors  # the same refused INSERT
async def test_objects_the_undo_cannot_delete_stay_scheduled_and_are_purged_later(suite, monkeypatch, caplog):
    user, headers = suite.user()
    project = await suite.project(headers)
    mine = str(Path(suite.settings.storage_path, user_prefix(user)))
    unlink = Path.unlink

    def refusing(path: Path, missing_ok: bool = False) -> None:
        if str(path).startswith(mine):
            raise PermissionError(13, "Permission denied", str(path))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refusing)
    async with avatars_refused_for(suite, user):
        response = await suite.upload(headers, project, jpeg())
    assert response.status_code == 500
    [failure] = logged(caplog, "upload_undo_objects_failed")
    assert len(failure["keys"]) == 2
    assert await scheduled_deletions(suite, user_prefix(user) + "%") == sorted(failure["keys"])
    assert len(await suite.objects(user)) == 2  # still there: the store refused
    assert (await suite.balance(headers))["available"] == 100  # the hold was released all the same

    monkeypatch.undo()  # the store works again: the periodic purge (5 s in tests) removes them
    await eventually(lambda: suite.no_objects(user), what="objects purged")

    async def unscheduled() -> bool:  # the purge deletes the files, then commits their rows' removal
        return await scheduled_deletions(suite, user_prefix(user) + "%") == []

    await eventually(unscheduled, what="deletions done")
    await suite.assert_untouched(user, headers)


# --- the COMMIT happens but its reply is lost: the avatar is kept, and paid for once ------------------


class LosesCommitReply:
    """A TCP proxy to PostgreSQL that, once armed, forwards the next COMMIT, waits for PostgreSQL's answer (so
    the transaction is durable), drops it and breaks the client's link: a commit whose acknowledgement was lost."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.armed, self.swallowed = False, 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        committing = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                if self.armed and b"COMMIT" in data:
                    self.armed = False
                    committing.set()  # before the write: its answer cannot overtake this
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()  # each side's end reaches the other, or a closing client waits forever

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if committing.is_set():
                    self.swallowed += 1
                    writer.transport.abort()
                    up_writer.close()
                    return
                writer.write(data)
                await writer.drain()
            writer.close()

        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(upstream(), downstream())

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def upload_through(suite, monkeypatch, proxy: LosesCommitReply) -> tuple[str, dict[str, str], httpx.Response]:
    """An upload whose database link runs through `proxy`, armed for the avatar's COMMIT."""
    user, headers = suite.user()
    project = await suite.project(headers)
    url = suite.settings.database_url
    local = await proxy.start()
    db = Database(url.replace(f"@{proxy.host}:{proxy.port}/", f"@127.0.0.1:{local}/"), "avatars")
    monkeypatch.setattr(suite.workflows, "db", db)
    try:
        async with db.sessions() as session:  # a pooled connection, so the next COMMIT is the avatar's
            await session.execute(text("SELECT 1"))
        proxy.armed = True
        response = await suite.upload(headers, project, jpeg())
    finally:
        await db.dispose()
        await proxy.stop()
    assert proxy.swallowed == 1
    return user, headers, response


def database_address(suite) -> tuple[str, int]:
    host, port = re.search(r"@([^:/]+):(\d+)/", suite.settings.database_url).groups()  # type: ignore[union-attr]
    return host, int(port)


async def test_a_commit_whose_reply_is_lost_keeps_the_paid_avatar(suite, monkeypatch, caplog):
    user, headers, response = await upload_through(suite, monkeypatch, LosesCommitReply(*database_address(suite)))
    assert response.status_code == 201, response.text
    assert logged(caplog, "upload_commit_unconfirmed_but_done")
    assert await suite.rows(user) == 1 and len(await suite.objects(user)) == 2
    balance = await suite.balance(headers)  # captured through the outbox committed with the row
    assert (balance["balance"], balance["held"]) == (90, 0)
    avatar = response.json()["avatar"]
    assert (await suite.api.get(avatar["baseImageUrl"])).status_code == 200


class DelaysCommit(LosesCommitReply):
    """Once armed, breaks the client's link as it sends the next COMMIT, and hands that COMMIT to PostgreSQL
    only `delay` seconds later: the client's undo runs while its transaction is still open, then it commits."""

    delay = 1.0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)

        async def upstream() -> None:
            while data := await reader.read(65536):
                if self.armed and b"COMMIT" in data:
                    self.armed, self.swallowed = False, self.swallowed + 1
                    writer.transport.abort()
                    await asyncio.sleep(self.delay)
                up_writer.write(data)
                await up_writer.drain()
            await asyncio.sleep(self.delay + 1)  # the late COMMIT's answer is read before the link goes
            up_writer.close()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if not writer.transport.is_closing():
                    writer.write(data)
            writer.close()

        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(upstream(), downstream())


async def test_a_commit_still_landing_when_its_link_broke_is_waited_for_and_kept(suite, monkeypatch, caplog):
    """The undo must not decide before that COMMIT has: it waits for the project's lock, which the open
    transaction holds. Deciding at once would release the hold and delete the objects of an avatar that then
    commits: unpaid, and without its images."""
    user, headers, response = await upload_through(suite, monkeypatch, DelaysCommit(*database_address(suite)))
    assert response.status_code == 201, response.text
    assert logged(caplog, "upload_commit_unconfirmed_but_done")
    assert await suite.rows(user) == 1 and len(await suite.objects(user)) == 2
    balance = await suite.balance(headers)
    assert (balance["balance"], balance["held"]) == (90, 0)


# --- releasing the hold fails: it expires, and nothing can charge it afterwards -----------------------


def release_refused(real: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
    """The real credits service, except that every release answers 503."""

    class Transport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/release"):
                return httpx.Response(503, json={"error": "Service unavailable"})
            return await real.handle_async_request(request)

    return Transport()


async def test_a_hold_whose_release_fails_expires_and_charges_nothing(suite, monkeypatch, caplog):
    user, headers = suite.user()
    project = await suite.project(headers)
    real = suite.workflows.credits.client.transport
    tokens = ServiceTokens(suite.settings.service_token_secret, "avatars")
    flaky = CreditsClient(InternalClient("http://credits", tokens, transport=release_refused(real)))
    monkeypatch.setattr(suite.workflows, "credits", flaky)
    monkeypatch.setattr(suite.settings, "credit_hold_ttl_seconds", 1)
    response = await suite.upload(headers, project, jpeg()[:-400])  # passes the header check, fails to decode
    assert (response.status_code, response.json()) == (400, {"error": "Invalid or corrupt image"})
    [line] = logged(caplog, "upload_undo_release_failed")
    assert line["holdId"] and line["expiresAt"]  # says which hold frees itself, and when
    monkeypatch.undo()
    await suite.assert_untouched(user, headers)  # held 0 once expired, balance untouched
    with pytest.raises(HoldExpired):  # the capture a late success would send is refused too
        await suite.workflows.credits.capture(line["holdId"], f"capture:{line['holdId']}")
    assert (await suite.balance(headers))["balance"] == 100


# --- the store: a directory is no object; refusals keep deletions scheduled; S3 errors are not 500 ------


def signed(suite, key: str) -> str:
    return MediaSigner(suite.settings.media_url_secret, 600).sign(key)


async def test_a_signed_url_naming_a_directory_is_404(suite):
    """It was a 500 (IsADirectoryError) on GET and a 200 on HEAD."""
    await directory_is_404(suite)


async def test_a_signed_url_naming_a_directory_is_404_on_s3(s3_suite):
    await directory_is_404(s3_suite)


async def directory_is_404(suite) -> None:
    user, headers = suite.user()
    avatar = await suite.created(headers, await suite.project(headers), jpeg())
    directory = f"{user_prefix(user)}{avatar['id']}"
    for method in ("GET", "HEAD"):
        response = await suite.api.request(method, signed(suite, directory))
        assert response.status_code == 404, (method, response.status_code)


@contextlib.contextmanager
def bucket_policy(storage: S3Storage, action: str, keys: list[str]) -> Iterator[None]:
    resources = [f"arn:aws:s3:::{storage.bucket}/{k}" for k in keys]
    statement = {"Effect": "Deny", "Principal": "*", "Action": action, "Resource": resources}
    storage.client.put_bucket_policy(
        Bucket=storage.bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    )
    try:
        yield
    finally:
        storage.client.delete_bucket_policy(Bucket=storage.bucket)


async def test_keys_s3_refuses_to_delete_stay_scheduled_until_it_accepts(s3_suite, caplog):
    suite = s3_suite
    assert isinstance(suite.storage, S3Storage)
    user, headers = suite.user()
    project = await suite.project(headers)
    kept, gone = [await suite.created(headers, project, jpeg(64, 64)) for _ in range(2)]
    keys = await suite.objects(user)
    stuck = next(k for k in keys if kept["id"] in k and "original" in k)
    with bucket_policy(suite.storage, "s3:DeleteObject", [stuck]):
        for avatar in (kept, gone):
            assert (await suite.api.delete(f"{APP}/avatars/{avatar['id']}", headers=headers)).status_code == 200

        async def only_the_refused_one_left() -> bool:
            return await suite.objects(user) == [stuck] and await scheduled_deletions(suite, stuck) == [stuck]

        await eventually(only_the_refused_one_left, what="the refused key still scheduled, the others removed")
        assert logged(caplog, "object_delete_refused")
        assert await suite.janitor.purge() == 0  # retried, refused again, still scheduled
        assert await scheduled_deletions(suite, stuck) == [stuck]
    # Once S3 accepts, the key goes: by this purge, or by the service's own purge loop if it ran first (the
    # count alone would race with that loop, and so would a check right after this purge: the loop may hold the
    # row, skipped here, with its file not yet removed).
    await suite.janitor.purge()

    async def all_gone() -> bool:
        return await suite.objects(user) == [] and await scheduled_deletions(suite, stuck) == []

    await eventually(all_gone, what="the refused key removed once S3 accepts")


async def test_s3_refusing_reads_is_502_at_the_media_url_never_500(s3_suite):
    suite = s3_suite
    _, headers = suite.user()
    avatar = await suite.created(headers, await suite.project(headers), jpeg())
    url = avatar["thumbnailUrl"]
    key = url.split("?")[0].removeprefix("/media/")
    # (moto applies the policy to GET only; HEAD's mapping is in test_storage_contract.py)
    with bucket_policy(suite.storage, "s3:GetObject", [key]):
        response = await suite.api.get(url)
        assert (response.status_code, response.json()) == (502, {"error": "Bad gateway"})
    assert (await suite.api.get(url)).status_code == 200
