"""Workflows: the avatar use cases that call other services or storage and so own their unit of work
(service.py functions never commit and never leave the database; the request or message scope commits them).

Creating an avatar (upload, save-preview): validate, reserve credits, decode, store, commit; undo everything on
any failure. Order matters. Every check that can refuse the request (form, project ownership, the image's
header: format, size, decoded memory) runs before credits are reserved, so bad input never touches money, and
no pixel is decoded for a caller who cannot pay; an image that passes its header but fails to decode releases
its hold. Objects are stored before the row commits and
removed again if the commit does not happen; the credits are captured through the outbox in the avatar's own
transaction and released if it never commits. A failure therefore leaves no row, no object and no charge.

With an `Idempotency-Key`, the key is claimed before anything else: a creation whose key has already answered is
replayed (the same avatar, its URLs signed anew), a retry while the first attempt still runs is 409 with
Retry-After, and the answer is recorded in the avatar's own transaction. A failed attempt frees its key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from asyncpg import Record
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy import text

from lumiku_avatars import images, service
from lumiku_avatars.form import ImageRequired, UploadForm, too_large
from lumiku_avatars.models import Avatar, idempotency_keys
from lumiku_avatars.objects import object_keys
from lumiku_avatars.repository import AvatarRepository, ObjectDeletionRepository
from lumiku_avatars.schemas import AvatarUploadFields, SavePreviewRequest
from lumiku_avatars.settings import AvatarsSettings
from lumiku_common.clients.avatars import GeneratedAvatarRequest, PreviewImage
from lumiku_common.clients.credits import CreditsClient, Hold, ReserveRequest
from lumiku_common.clients.projects import ProjectInfo, ProjectsClient
from lumiku_common.db import Database
from lumiku_common.errors import BadRequest
from lumiku_common.idempotency import (
    Attempt,
    Claim,
    Idempotency,
    Outcome,
    user_scoped,
)
from lumiku_common.ids import new_id
from lumiku_common.logs import get_logger
from lumiku_common.metrics import UPLOAD_STAGE, timed
from lumiku_common.prefetch import Remembered, ahead
from lumiku_common.storage import DeleteFailed, Storage

log = get_logger(__name__)
_keys = Idempotency(idempotency_keys)
_WAIT_FOR_LOCKS = text("SET LOCAL lock_timeout = '10s'")


@dataclass(frozen=True)
class Created:
    avatar: Avatar
    replayed: bool = False  # the answer of an earlier request with the same Idempotency-Key


@dataclass
class AvatarWorkflows:
    settings: AvatarsSettings
    db: Database
    storage: Storage
    projects: ProjectsClient
    credits: CreditsClient
    limits: images.Limits = field(init=False)
    decodes: images.DecodeBudget = field(init=False)  # this process's image memory, shared by its uploads
    # The project of each avatar read lately (~2.5 MB at most): see `detail`.
    projects_of: Remembered[str, str] = field(default_factory=lambda: Remembered(10_000))

    def __post_init__(self) -> None:
        s = self.settings
        self.limits = images.Limits(
            s.max_image_pixels, s.max_image_side, s.thumbnail_size, s.jpeg_quality, s.max_decoded_bytes, s.max_icc_bytes
        )
        self.decodes = images.DecodeBudget(s.decode_memory_bytes)

    async def upload(self, user_id: str, project_id: str, form: UploadForm, key: str | None = None) -> Created:
        if not form.image:
            raise ImageRequired()
        fields = _validated(AvatarUploadFields, form.fields)
        origin = AvatarOrigin("upload", self.settings.upload_cost, "avatar_upload", "Upload avatar", "avatar-upload")
        return await self._create(
            user_id, project_id, form.image, fields.name, fields.model_dump(by_alias=False), origin, key
        )

    async def save_preview(self, user_id: str, project_id: str, body: bytes, key: str | None = None) -> Created:
        """The spec's save-preview: the client's copy of an AI preview, checked and charged like an upload."""
        request = _validated_json(SavePreviewRequest, body)
        image = _decoded(request.image_base64, self.settings.max_upload_bytes)
        attributes = request.model_dump(by_alias=False, exclude={"image_base64", "thumbnail_base64"})
        origin = AvatarOrigin(
            "ai_generated", self.settings.save_preview_cost, "avatar_generation", "Generate avatar", "save-preview"
        )
        return await self._create(user_id, project_id, image, request.name, attributes, origin, key)

    async def create_generated(self, request: GeneratedAvatarRequest) -> tuple[Avatar, bool]:
        """An AI image of the generation service becomes an avatar, once per image id (`avatarId`): a retry gets
        the avatar made the first time (False) and nothing runs again. The image goes through the upload pipeline;
        the generation's credit hold is captured through the outbox in the avatar's transaction."""
        existing = await self._generated(request.user_id, request.avatar_id)
        if existing is not None:
            return existing, False
        image = _decoded(request.image_base64, self.settings.max_upload_bytes)
        cost = await asyncio.to_thread(images.admit, image, self.limits)
        attributes = request.model_dump(
            by_alias=False,
            exclude={"avatar_id", "user_id", "project_id", "hold_id", "name", "image_base64", "capture_by"},
        )
        keys: tuple[str, ...] = ()
        try:
            original, thumbnail = await images.process(image, self.limits, self.decodes, cost)
            # Named by this attempt, not by the image: a retry of the image running alongside (its caller gave up
            # waiting) must never write or undo the objects of the attempt that commits.
            keys = object_keys(request.user_id, new_id(), original.extension, thumbnail.extension)
            await asyncio.gather(self.storage.put(keys[0], original.data), self.storage.put(keys[1], thumbnail.data))
            async with self.db.unit_of_work() as session:
                avatar = _avatar(
                    request.avatar_id,
                    request.user_id,
                    request.project_id,
                    {"name": request.name, **attributes},
                    "ai_generated",
                    keys,
                    original,
                )
                await service.create_avatar(session, avatar, request.hold_id, request.capture_by, generated=True)
        except BaseException:
            await asyncio.shield(self._undo_objects(request.avatar_id, request.project_id, list(keys)))
            # A concurrent retry of the same image may have committed first: that avatar is the answer.
            existing = await self._generated(request.user_id, request.avatar_id)
            if existing is not None:
                return existing, False
            raise
        return avatar, True

    async def settle_generated(self, user_id: str, project_id: str, image_id: str) -> Avatar:
        async with self.db.unit_of_work() as session:
            avatar = await service.settle_generated(session, user_id, project_id, image_id)
        if avatar is None:
            raise service.ImageWasGivenUp()
        return avatar

    async def _generated(self, user_id: str, image_id: str) -> Avatar | None:
        """The avatar made of this image, also when it has been deleted since (as it was then)."""
        async with self.db.unit_of_work() as session:
            repository = AvatarRepository(session)
            return await repository.get(user_id, image_id) or await repository.deleted_generated(user_id, image_id)

    async def preview_image(self, data: str) -> PreviewImage:
        """An AI preview through the upload pipeline, nothing stored: the client sees what save-preview keeps."""
        image = _decoded(data, self.settings.max_upload_bytes)
        cost = await asyncio.to_thread(images.admit, image, self.limits)
        original, thumbnail = await images.process(image, self.limits, self.decodes, cost)
        return PreviewImage(
            image_base64=_data_url(original),
            thumbnail_base64=_data_url(thumbnail),
            width=original.width,
            height=original.height,
        )

    async def _undo_objects(self, avatar_id: str, project_id: str, keys: list[str]) -> None:
        """Removes this attempt's objects unless its own commit landed (they are the avatar's then); another
        attempt's avatar never references them."""
        try:
            async with self._after_inserts(project_id) as repository:
                referenced = await repository.referenced_keys(keys) if keys else set()
            if unreferenced := [k for k in keys if k not in referenced]:
                await self.storage.delete(unreferenced)
        except Exception as exc:
            log.warning("generated_undo_objects_failed", avatarId=avatar_id, error=repr(exc))

    async def detail(self, user_id: str, avatar_id: str) -> tuple[Record, ProjectInfo]:
        """The avatar and the project it belongs to (`GET /avatars/:id` shows both). An avatar keeps its project
        for life: once that is known, the project is asked for alongside the avatar's own read."""
        known = self.projects_of.get(avatar_id)
        async with ahead(self._project(user_id, known)) as early:
            avatar = await service.read_avatar(self.db, user_id, avatar_id)
            project_id = avatar["project_id"]
            self.projects_of.put(avatar_id, project_id)
            project = await early if known == project_id else None
            return avatar, project or await self.projects.ensure_owned(user_id, project_id)

    async def _project(self, user_id: str, project_id: str | None) -> ProjectInfo | None:
        return None if project_id is None else await self.projects.ensure_owned(user_id, project_id)

    async def _create(
        self,
        user_id: str,
        project_id: str,
        image: bytes,
        name: str,
        attributes: dict[str, Any],
        origin: AvatarOrigin,
        key: str | None,
    ) -> Created:
        if key is None:
            return Created(await self._make(user_id, project_id, image, name, attributes, origin, None))
        image_digest = (await asyncio.to_thread(hashlib.sha256, image)).hexdigest()
        request = {"projectId": project_id, "attributes": attributes, "image": image_digest}

        async def make(claim: Claim) -> Created:
            return Created(await self._make(user_id, project_id, image, name, attributes, origin, claim))

        async def replay(outcome: Outcome) -> Created:
            return await self._replayed(user_id, outcome)

        attempt = Attempt.of(user_scoped(user_id, key), origin.operation, request)
        return await _keys.guarded(self.db, attempt, make, replay)

    async def _make(
        self,
        user_id: str,
        project_id: str,
        image: bytes,
        name: str,
        attributes: dict[str, Any],
        origin: AvatarOrigin,
        claim: Claim | None,
    ) -> Avatar:
        with timed(UPLOAD_STAGE, "project"):
            await self.projects.ensure_owned(user_id, project_id)
        # From the header alone: what is no acceptable image is refused before any money moves or pixel decodes.
        with timed(UPLOAD_STAGE, "admit"):
            cost = await asyncio.to_thread(images.admit, image, self.limits)
        avatar_id = new_id()  # also the upload's id: names the objects and keys the credit hold
        with timed(UPLOAD_STAGE, "hold"):
            hold = await self.credits.reserve(
                ReserveRequest(
                    user_id=user_id,
                    amount=origin.cost,
                    reference_id=avatar_id,
                    reference_type=origin.reference_type,
                    description=f"{origin.label}: {name}",
                    idempotency_key=f"avatar-upload:{avatar_id}",
                    ttl_seconds=self.settings.credit_hold_ttl_seconds,
                )
            )
        keys: tuple[str, ...] = ()
        try:
            with timed(UPLOAD_STAGE, "process"):
                original, thumbnail = await images.process(image, self.limits, self.decodes, cost)
            keys = object_keys(user_id, avatar_id, original.extension, thumbnail.extension)
            with timed(UPLOAD_STAGE, "store"):
                await asyncio.gather(
                    self.storage.put(keys[0], original.data), self.storage.put(keys[1], thumbnail.data)
                )
            with timed(UPLOAD_STAGE, "commit"):
                async with self.db.unit_of_work() as session:
                    if claim is not None:
                        await _keys.record(session, claim, 201, {"avatarId": avatar_id})
                    avatar = _avatar(avatar_id, user_id, project_id, attributes, origin.source_type, keys, original)
                    await service.create_avatar(session, avatar, hold.id, hold.expires_at)
        except Exception as exc:
            if await asyncio.shield(self._undo(avatar_id, project_id, list(keys), hold)):
                log.warning("upload_commit_unconfirmed_but_done", avatarId=avatar_id, error=repr(exc))
                return avatar  # the commit happened, only its acknowledgement was lost: the upload succeeded
            raise
        except BaseException:  # cancelled (the client left): undo, but never report success
            await asyncio.shield(self._undo(avatar_id, project_id, list(keys), hold))
            raise
        return avatar

    async def _replayed(self, user_id: str, outcome: Outcome) -> Created:
        """The avatar an earlier request with this key created, as it is now (its media URLs signed anew)."""
        async with self.db.unit_of_work() as session:
            avatar = await AvatarRepository(session).get(user_id, outcome.body["avatarId"])
        if avatar is None:
            raise service.KeyedAvatarDeleted()
        return Created(avatar, replayed=True)

    async def _committed(self, avatar_id: str, project_id: str) -> bool:
        """Whether the avatar's row exists (`_after_inserts`). Raises after 10 s of waiting: the outcome is then
        unknown, and the caller leaves everything to the safety nets."""
        async with self._after_inserts(project_id) as repository:
            return await repository.exists(avatar_id)

    @contextlib.asynccontextmanager
    async def _after_inserts(self, project_id: str) -> AsyncIterator[AvatarRepository]:
        """Reads once any transaction still inserting into the project has ended: a COMMIT whose link broke may
        still be landing, and it holds the project's lock until it does."""
        async with self.db.unit_of_work() as session:
            repository = AvatarRepository(session)
            await session.execute(_WAIT_FOR_LOCKS)
            await repository.lock_project(project_id)
            yield repository

    async def _undo(self, avatar_id: str, project_id: str, keys: list[str], hold: Hold) -> bool:
        """True if the avatar did commit (nothing to undo). Best effort otherwise; what it cannot do, the purge or
        the orphan sweeper (objects) and the hold's expiry (credits) will."""
        try:
            if await self._committed(avatar_id, project_id):
                return True  # kept: it is paid for by the capture committed with it
        except Exception as exc:
            # Whether it committed is unknown: deleting could break a kept avatar and releasing leave it unpaid.
            # Both nets are safe here: the sweeper spares referenced objects, and the hold expires unless captured.
            log.warning("upload_undo_skipped", avatarId=avatar_id, holdId=hold.id, error=repr(exc))
            return False
        await self._remove_objects(avatar_id, keys)
        try:
            await self.credits.release(hold.id, f"release:{hold.id}", "avatar upload failed")
        except Exception as exc:
            log.warning(
                "upload_undo_release_failed",
                avatarId=avatar_id,
                holdId=hold.id,
                expiresAt=hold.expires_at.isoformat(),  # when credits frees it by itself
                error=repr(exc),
            )
        return False

    async def _remove_objects(self, avatar_id: str, keys: list[str]) -> None:
        """Deletes the upload's objects; the ones that resist are scheduled, so the purge retries them soon."""
        try:
            await self.storage.delete(keys)
            return
        except DeleteFailed as exc:
            left, error = list(exc.failed), repr(exc)
        except Exception as exc:
            left, error = keys, repr(exc)
        log.warning("upload_undo_objects_failed", avatarId=avatar_id, keys=left, error=error)
        try:
            async with self.db.unit_of_work() as session:
                await ObjectDeletionRepository(session).request(left)
        except Exception as exc:  # the orphan sweeper is the last net
            log.warning("upload_undo_schedule_failed", avatarId=avatar_id, error=repr(exc))


@dataclass(frozen=True)
class AvatarOrigin:
    """Where a new avatar comes from, and so what it costs and how the ledger names it."""

    source_type: str
    cost: int
    reference_type: str
    label: str
    operation: str  # what its idempotency keys are recorded as


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], fields: dict[str, str]) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


def _validated_json(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


class InvalidImageData(BadRequest):
    message = "Invalid image data (expected base64 or a data URL)"


def _decoded(data: str, max_bytes: int) -> bytes:
    """Bare base64 or a data URL; the declared media type is ignored (the bytes decide, as for uploads)."""
    encoded = data.split(",", 1)[1] if data.startswith("data:") and "," in data else data
    if -(-len(encoded) * 3 // 4) > max_bytes + 3:
        raise too_large(max_bytes)
    try:
        image = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageData() from exc
    if not image:
        raise ImageRequired()
    if len(image) > max_bytes:
        raise too_large(max_bytes)
    return image


_MEDIA_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def _data_url(encoded: images.Encoded) -> str:
    return f"data:{_MEDIA_TYPES[encoded.extension]};base64,{base64.b64encode(encoded.data).decode()}"


def _avatar(
    avatar_id: str,
    user_id: str,
    project_id: str,
    attributes: dict[str, Any],
    source_type: str,
    keys: tuple[str, str],
    original: images.Encoded,
) -> Avatar:
    return Avatar(
        id=avatar_id,
        user_id=user_id,
        project_id=project_id,
        source_type=source_type,
        base_image_key=keys[0],
        thumbnail_key=keys[1],
        image_width=original.width,
        image_height=original.height,
        usage_count=0,
        **attributes,
    )
