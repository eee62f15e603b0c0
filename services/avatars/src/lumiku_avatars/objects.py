"""Image objects: their keys, their removal after the deleting transaction commits, and the orphan sweeper.

An avatar's row and its objects cannot change in one transaction, so each side has a safety net:
- deleting: the keys are recorded in `object_deletions` in the same transaction as the row's deletion, and
  purged after commit (at once, or by the periodic purge after a crash);
- creating: objects are stored before the row commits; if the process dies in between, the sweeper removes
  objects that no row references once they are older than a grace period, and what killed writes left behind
  (the filesystem's `.tmp-` files, S3's unfinished multipart uploads).
Keys the store refuses to delete stay scheduled and are retried; a refusal never stops the other keys.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_avatars.repository import AvatarRepository, ObjectDeletionRepository
from lumiku_avatars.settings import AvatarsSettings
from lumiku_common.db import Database
from lumiku_common.logs import get_logger
from lumiku_common.periodic import periodic
from lumiku_common.storage import DeleteFailed, Storage

log = get_logger(__name__)

PREFIX = "avatars/"
_BATCH = 500


def object_keys(user_id: str, attempt_id: str, original_ext: str, thumbnail_ext: str) -> tuple[str, str]:
    """Server-made keys: a digest of the user id (ids may hold any character) and a new id of the attempt that
    writes them (an upload's avatar id), so no two attempts ever share an object."""
    owner = hashlib.sha256(user_id.encode()).hexdigest()[:24]
    base = f"{PREFIX}{owner}/{attempt_id}"
    return f"{base}/original{original_ext}", f"{base}/thumbnail{thumbnail_ext}"


class ObjectJanitor:
    def __init__(self, settings: AvatarsSettings, db: Database, storage: Storage):
        self.settings, self.db, self.storage = settings, db, storage
        self.wake = asyncio.Event()  # set after a commit that scheduled deletions

    async def schedule(self, session: AsyncSession, keys: Sequence[str]) -> None:
        """Records `keys` for removal in the caller's transaction; they are purged once it commits."""
        await ObjectDeletionRepository(session).request(list(keys))
        event.listen(session.sync_session, "after_commit", lambda _: self.wake.set(), once=True)

    async def purge(self) -> int:
        """Removes scheduled objects batch by batch; a batch that removes nothing ends the round (the store is
        refusing), so refusals are retried every interval instead of in a hot loop."""
        removed = 0
        while True:
            async with self.db.unit_of_work() as session:
                repo = ObjectDeletionRepository(session)
                keys = await repo.claim(_BATCH)
                if not keys:
                    return removed
                failed = await self._delete(keys)
                await repo.done([k for k in keys if k not in failed])
                await repo.postpone(list(failed))  # still scheduled, behind the others
            removed += len(keys) - len(failed)
            if len(failed) == len(keys):
                return removed

    async def _delete(self, keys: list[str]) -> set[str]:
        """The keys the store refused (the others are gone); other store failures propagate and roll back."""
        try:
            await self.storage.delete(keys)
        except DeleteFailed as exc:
            log.warning("object_delete_refused", count=len(exc.failed), errors=dict(list(exc.failed.items())[:5]))
            return set(exc.failed)
        return set()

    async def sweep_orphans(self, now: datetime | None = None) -> int:
        """Removes objects older than the grace period that no avatar references, and stale temporaries."""
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.settings.orphan_grace_seconds)
        removed, batch = 0, []
        async for info in self.storage.list(PREFIX):
            if info.modified < cutoff:
                batch.append(info.key)
            if len(batch) >= _BATCH:
                removed += await self._remove_unreferenced(batch)
                batch = []
        if batch:
            removed += await self._remove_unreferenced(batch)
        temporaries = await self.storage.sweep_temporaries(PREFIX, cutoff)
        if removed or temporaries:
            log.info("orphan_objects_removed", count=removed, temporaries=temporaries)
        return removed + temporaries

    async def _remove_unreferenced(self, keys: list[str]) -> int:
        async with self.db.unit_of_work() as session:
            referenced = await AvatarRepository(session).referenced_keys(keys)
        orphans = [k for k in keys if k not in referenced]
        # Refused orphans are still listed next time: the next sweep retries them.
        return len(orphans) - len(await self._delete(orphans))

    async def purge_loop(self) -> None:
        """Purges right after each deleting commit, and every interval for deletions whose wake-up was lost."""
        await periodic("object-purge", self.purge, self.settings.object_purge_interval_seconds, wake=self.wake)

    async def sweep_loop(self) -> None:
        interval = self.settings.orphan_sweep_interval_seconds
        await periodic("orphan-sweep", self.sweep_orphans, interval, first_delay=min(60.0, interval))
