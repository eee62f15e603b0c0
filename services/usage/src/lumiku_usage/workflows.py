"""Use cases that ask the avatars service (who owns an avatar the projection has not seen yet), and so own
their units of work."""

from __future__ import annotations

import asyncio

from lumiku_common.clients.avatars import AvatarNotFound, AvatarOwner, AvatarsClient
from lumiku_common.db import Database
from lumiku_common.errors import ServiceUnavailable
from lumiku_common.idempotency import Idempotency, Outcome, user_scoped
from lumiku_common.logs import get_logger
from lumiku_common.messaging.consumer import Defer, Delivery, Poison
from lumiku_common.messaging.events import AvatarUsed
from lumiku_usage import service
from lumiku_usage.models import KnownAvatar, idempotency_keys
from lumiku_usage.schemas import HistoryParams, HistoryResponse, TrackUsageRequest
from lumiku_usage.settings import UsageSettings

log = get_logger(__name__)
_keys = Idempotency(idempotency_keys)
UNAVAILABLE = object()  # the lookup's answer when avatars could not say


class UsageWorkflows:
    def __init__(self, settings: UsageSettings, db: Database, avatars: AvatarsClient):
        self.settings, self.db, self.avatars = settings, db, avatars
        self._lookups = asyncio.Semaphore(16)

    async def aclose(self) -> None:
        await self.avatars.aclose()

    # --- ownership ------------------------------------------------------------------------------------

    async def _lookup(self, avatar_id: str) -> AvatarOwner | object | None:
        async with self._lookups:
            try:
                owner = await asyncio.wait_for(
                    self.avatars.owner(avatar_id), self.settings.owner_lookup_timeout_seconds
                )
            except (ServiceUnavailable, TimeoutError) as exc:
                log.warning("avatar_owner_lookup_failed", avatarId=avatar_id, error=repr(exc))
                return UNAVAILABLE
        if owner is not None:
            async with self.db.unit_of_work() as session:
                await service.remember_avatar(session, owner.avatar_id, owner.user_id)
        return owner

    async def known(self, avatar_ids: set[str]) -> tuple[dict[str, KnownAvatar | None], set[str]]:
        """Each avatar's projection row, asking avatars about those it has not seen (then remembered);
        also the ids avatars could not be asked about."""
        async with self.db.sessions() as session:
            found: dict[str, KnownAvatar | None] = dict(await service.owners(session, list(avatar_ids)))
        unknown = sorted(avatar_ids - found.keys())
        unavailable: set[str] = set()
        for avatar_id, answer in zip(unknown, await asyncio.gather(*map(self._lookup, unknown)), strict=True):
            if answer is UNAVAILABLE:
                unavailable.add(avatar_id)
            elif isinstance(answer, AvatarOwner):
                found[avatar_id] = KnownAvatar(avatar_id=avatar_id, user_id=answer.user_id, deleted=False)
            else:
                found[avatar_id] = None
        return found, unavailable

    async def ensure_owned(self, user_id: str, avatar_id: str) -> None:
        """404 `Avatar not found` unless the avatar is the user's; 503 if avatars must be asked and cannot."""
        found, unavailable = await self.known({avatar_id})
        if avatar_id in unavailable:
            raise ServiceUnavailable()
        if not service.owned(found.get(avatar_id), user_id):
            raise AvatarNotFound()

    async def check_events(self, deliveries: list[Delivery]) -> dict[str, Exception]:
        """Before a batch of `avatar.used`: the ones that must not be recorded, and why. Unknown to the
        projection and to avatars (or another user's, or deleted): dead-lettered. Unknown while avatars is
        down: deferred, and retried until someone knows (the projection may learn it meanwhile)."""
        found, unavailable = await self.known({d.event.avatar_id for d in deliveries})
        verdicts: dict[str, Exception] = {}
        for delivery in deliveries:
            event: AvatarUsed = delivery.event
            user_id, known = delivery.envelope.user_id, found.get(event.avatar_id)
            if not user_id:
                verdicts[delivery.envelope.id] = Poison("envelope has no userId (the avatar's owner)")
            elif event.avatar_id in unavailable:
                verdicts[delivery.envelope.id] = Defer(
                    f"owner of avatar {event.avatar_id} unknown; avatars unavailable"
                )
            elif known is None:
                verdicts[delivery.envelope.id] = Poison(f"avatar {event.avatar_id} not found")
            elif known.deleted:
                verdicts[delivery.envelope.id] = Poison(f"avatar {event.avatar_id} was deleted")
            elif known.user_id != user_id:
                verdicts[delivery.envelope.id] = Poison(f"avatar {event.avatar_id} does not belong to userId")
        return verdicts

    # --- HTTP use cases -------------------------------------------------------------------------------

    async def track(self, user_id: str, body: TrackUsageRequest, key: str | None) -> Outcome:
        await self.ensure_owned(user_id, body.avatar_id)
        async with self.db.unit_of_work() as session:
            if key is None:
                return Outcome(201, (await service.track(session, user_id, body)).model_dump(mode="json"))
            return await _keys.once(
                session,
                key=user_scoped(user_id, key),
                operation="track-usage",
                request=body.model_dump(mode="json"),
                status_code=201,
                action=lambda: service.track(session, user_id, body),
            )

    async def history(self, user_id: str, avatar_id: str, params: HistoryParams) -> HistoryResponse:
        await self.ensure_owned(user_id, avatar_id)
        async with self.db.sessions() as session:
            return await service.history(session, avatar_id, params)
