"""The upload use case: validate, decode, reserve credits, store, commit; undo everything on any failure.

Order matters. Every check that can refuse the request (form, project ownership, image decoding) runs before
credits are reserved, so bad input never touches money. Objects are stored before the row commits and
removed again if the commit does not happen; the credits are captured through the outbox in the avatar's own
transaction and released if it never commits. A failure therefore leaves no row, no object and no charge.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from lumiku_avatars import images, service
from lumiku_avatars.form import ImageRequired, UploadForm
from lumiku_avatars.models import Avatar
from lumiku_avatars.objects import object_keys
from lumiku_avatars.repository import AvatarRepository
from lumiku_avatars.schemas import AvatarUploadFields
from lumiku_avatars.settings import AvatarsSettings
from lumiku_common.clients.credits import CreditsClient, Hold
from lumiku_common.clients.projects import ProjectsClient
from lumiku_common.db import Database
from lumiku_common.ids import new_id
from lumiku_common.logs import get_logger
from lumiku_common.storage import Storage

log = get_logger(__name__)


@dataclass
class Uploads:
    settings: AvatarsSettings
    db: Database
    storage: Storage
    projects: ProjectsClient
    credits: CreditsClient

    @property
    def limits(self) -> images.Limits:
        s = self.settings
        return images.Limits(s.max_image_pixels, s.max_image_side, s.thumbnail_size, s.jpeg_quality)

    async def upload(self, user_id: str, project_id: str, form: UploadForm) -> Avatar:
        if not form.image:
            raise ImageRequired()
        fields = _validated(form.fields)
        await self.projects.ensure_owned(user_id, project_id)
        original, thumbnail = await process(form.image, self.limits)
        avatar_id = new_id()  # also the upload's id: names the objects and keys the credit hold
        hold = await self.credits.reserve(
            user_id=user_id,
            amount=self.settings.upload_cost,
            reference_id=avatar_id,
            reference_type="avatar_upload",
            description=f"Upload avatar: {fields.name}",
            idempotency_key=f"avatar-upload:{avatar_id}",
            ttl_seconds=self.settings.credit_hold_ttl_seconds,
        )
        keys = object_keys(user_id, avatar_id, original.extension, thumbnail.extension)
        try:
            await asyncio.gather(self.storage.put(keys[0], original.data), self.storage.put(keys[1], thumbnail.data))
            async with self.db.unit_of_work() as session:
                avatar = _avatar(avatar_id, user_id, project_id, fields, keys, original)
                await service.create_avatar(session, avatar, hold.id)
        except BaseException:
            await asyncio.shield(self._undo(avatar_id, list(keys), hold))
            raise
        return avatar

    async def _undo(self, avatar_id: str, keys: list[str], hold: Hold) -> None:
        """Best effort; what it cannot do, the orphan sweeper (objects) and the hold's expiry (credits) will."""
        try:
            async with self.db.unit_of_work() as session:
                if await AvatarRepository(session).exists(avatar_id):
                    return  # the commit did happen (its acknowledgement was lost): keep it, it is paid for
            await self.storage.delete(keys)
        except Exception as exc:
            log.warning("upload_undo_objects_failed", avatarId=avatar_id, error=repr(exc))
        try:
            await self.credits.release(hold.id, f"release:{hold.id}", "avatar upload failed")
        except Exception as exc:
            log.warning("upload_undo_release_failed", avatarId=avatar_id, holdId=hold.id, error=repr(exc))


def _validated(fields: dict[str, str]) -> AvatarUploadFields:
    try:
        return AvatarUploadFields.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


async def process(data: bytes, limits: images.Limits) -> tuple[images.Encoded, images.Encoded]:
    """Original and thumbnail in two threads: Pillow releases the GIL while decoding and encoding."""
    images.sniff(data)  # refuse non-images before starting two decoders
    original, thumbnail = await asyncio.gather(
        asyncio.to_thread(images.make_original, data, limits),
        asyncio.to_thread(images.make_thumbnail, data, limits),
    )
    return original, thumbnail


def _avatar(
    avatar_id: str,
    user_id: str,
    project_id: str,
    fields: AvatarUploadFields,
    keys: tuple[str, str],
    original: images.Encoded,
) -> Avatar:
    attributes: dict[str, Any] = fields.model_dump(by_alias=False)
    return Avatar(
        id=avatar_id,
        user_id=user_id,
        project_id=project_id,
        source_type="upload",
        base_image_key=keys[0],
        thumbnail_key=keys[1],
        image_width=original.width,
        image_height=original.height,
        usage_count=0,
        **attributes,
    )
