"""Generation use cases that call out (projects, credits, avatars, the AI provider) and so own their units of
work; service.py does every change to this service's database inside them.

Submitting: the project must be the caller's; then the whole cost is reserved, one credit hold per image
(15 for the first, 10 for each further variation); only then is the job committed, together with the command
that sends it to the workers. A refusal (402) or any failure before that commit releases what was reserved and
queues nothing. With an `Idempotency-Key`, the key is claimed before any hold: a submit whose key already made a
job answers that job as it stands (finished, failed or canceled), a retry while the first submit still runs is
409 with Retry-After, and a submit that failed frees its key.

Running (a worker, for a `generation.run` command): take the job's lease, then for each image not yet done:
call the provider with the image's own seed (skipped when its bytes are already kept: a resumed job never asks
twice), keep the bytes, then store it — one image at a time per job, holding the job's row lock while avatars
makes the avatar (idempotent on the image id) and stages the capture of the image's hold in its own
transaction. A store cut short (a crash) is finished before any other image takes a hold, so the holds paid are
always the first ones (15, then 10 per variation). A cancel takes the same lock, so once it is acknowledged no
image is stored or charged. When every image is done the job is settled: holds no avatar pays are released
through the outbox.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import secrets
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from lumiku_common.clients.avatars import (
    AvatarsClient,
    GeneratedAvatarRequest,
    ImageGivenUp,
    ImageRefused,
    ProjectGone,
)
from lumiku_common.clients.credits import CreditsClient, Hold, ReserveRequest
from lumiku_common.clients.projects import ProjectsClient
from lumiku_common.db import Database, utcnow
from lumiku_common.errors import AppError, Conflict, InsufficientCredits
from lumiku_common.idempotency import (
    Attempt,
    Claim,
    Idempotency,
    user_scoped,
)
from lumiku_common.idempotency import Outcome as Recorded
from lumiku_common.ids import new_id
from lumiku_common.logs import get_logger
from lumiku_generation import service
from lumiku_generation.models import TERMINAL, Generation, GenerationImage, idempotency_keys
from lumiku_generation.prompts import NEGATIVE_PROMPT, enhance
from lumiku_generation.provider import Provider, ProviderError, ProviderImage, image_request
from lumiku_generation.schemas import GenerateRequest, GenerationOut, Preview, PreviewMetadata, PreviewRequest
from lumiku_generation.settings import GenerationSettings
from lumiku_generation.signals import Signals

log = get_logger(__name__)

MAX_SEED = 2**32 - 1
REFERENCE_TYPE = "avatar_generation"

T = TypeVar("T")
_keys = Idempotency(idempotency_keys)


class GenerationFailed(AppError):
    """The provider gave no usable image (after its retries): 502 in the spec's words."""

    status_code = 502

    def __init__(self, reason: str, headers: dict[str, str] | None = None):
        super().__init__(f"AI generation failed: {reason}", headers=headers)


class GenerationCanceled(Conflict):
    message = "Generation canceled"


@dataclass(frozen=True)
class Submitted:
    generation: GenerationOut
    replayed: bool = False  # the job an earlier request with the same Idempotency-Key submitted


@dataclass
class Outcome:
    """What a synchronous generate waited for."""

    generation: GenerationOut
    avatars: list[dict[str, Any]]

    @property
    def finished(self) -> bool:
        return self.generation.status in TERMINAL


@dataclass
class GenerationWorkflows:
    settings: GenerationSettings
    db: Database
    projects: ProjectsClient
    credits: CreditsClient
    avatars: AvatarsClient
    provider: Provider
    signals: Signals
    worker_id: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(3)}")

    # --- submitting ------------------------------------------------------------------------------------------

    async def submit(self, user_id: str, project_id: str, body: GenerateRequest, key: str | None = None) -> Submitted:
        if key is None:
            return Submitted(await self._submit(user_id, project_id, body, None))
        request = {"projectId": project_id, "request": body.model_dump(mode="json")}

        async def submit(claim: Claim) -> Submitted:
            return Submitted(await self._submit(user_id, project_id, body, claim))

        async def replay(outcome: Recorded) -> Submitted:
            return await self._replayed(user_id, outcome)

        return await _keys.guarded(self.db, Attempt.of(user_scoped(user_id, key), "generate", request), submit, replay)

    async def _submit(self, user_id: str, project_id: str, body: GenerateRequest, claim: Claim | None) -> GenerationOut:
        s = self.settings
        count = body.count or 1
        await self.projects.ensure_owned(user_id, project_id)
        job_id = new_id()
        holds: list[Hold] = []
        try:
            for index in range(count):
                holds.append(await self.credits.reserve(self._reserve_request(user_id, job_id, body, index, count)))
        except InsufficientCredits as exc:
            await asyncio.shield(self._release(holds, "generation not affordable"))
            raise InsufficientCredits(
                required=s.cost(count), current=exc.extra["current"] + sum(h.amount for h in holds)
            ) from exc
        except BaseException:
            await asyncio.shield(self._release(holds, "generation not submitted"))
            raise
        now = utcnow()
        job = Generation(
            id=job_id,
            user_id=user_id,
            project_id=project_id,
            status="queued",
            count=count,
            produced=0,
            cost=s.cost(count),
            charged=0,
            refunded=0,
            request=body.model_dump(mode="json", by_alias=False, exclude={"count"}),
            enhanced_prompt=enhance(body.prompt),
            hold_ids=[h.id for h in holds],
            settled=False,
            dispatched_at=now,
            deadline=min(h.expires_at for h in holds) - timedelta(seconds=s.hold_margin_seconds),
            runs=0,
            created_at=now,
        )
        images = [
            GenerationImage(
                id=new_id(), generation_id=job_id, index=i, seed=random.randint(0, MAX_SEED), status="pending"
            )
            for i in range(count)
        ]
        try:
            async with self.db.unit_of_work() as session:
                if claim is not None:
                    await _keys.record(session, claim, 201, {"generationId": job_id})
                await service.create(session, job, images)
                summary = await service.out(session, job)
        except BaseException as exc:
            committed = await asyncio.shield(self._committed(user_id, job_id))
            if committed is None:  # unknown: releasing could leave its avatars unpaid; the holds expire instead
                raise
            if committed:  # only the acknowledgement was lost: the job runs, and its holds pay for it
                if not isinstance(exc, Exception):
                    raise
                log.warning("generation_commit_unconfirmed_but_done", generationId=job_id, error=repr(exc))
                async with self.db.unit_of_work() as session:
                    return await service.out(session, await service.get(session, user_id, job_id))
            await asyncio.shield(self._release(holds, "generation not submitted"))
            raise
        return summary

    async def _replayed(self, user_id: str, outcome: Recorded) -> Submitted:
        """The job an earlier request with this key submitted, as it is now."""
        async with self.db.unit_of_work() as session:
            job = await service.get(session, user_id, outcome.body["generationId"])  # jobs are kept
            return Submitted(await service.out(session, job), replayed=True)

    async def _committed(self, user_id: str, job_id: str) -> bool | None:
        """Whether the job's row exists; None when the database cannot say."""
        try:
            async with self.db.unit_of_work() as session:
                return await service.submitted(session, user_id, job_id)
        except Exception as exc:
            log.warning("generation_submit_outcome_unknown", generationId=job_id, error=repr(exc))
            return None

    def _reserve_request(
        self, user_id: str, job_id: str, body: GenerateRequest, index: int, count: int
    ) -> ReserveRequest:
        label = f"Generate avatar: {body.name}" + (f" (image {index + 1} of {count})" if count > 1 else "")
        return ReserveRequest(
            user_id=user_id,
            amount=self.settings.price(index),
            reference_id=job_id,
            reference_type=REFERENCE_TYPE,
            description=label[:500],
            idempotency_key=f"generation:{job_id}:{index}",
            ttl_seconds=self.settings.hold_ttl_seconds,
        )

    async def _release(self, holds: list[Hold], reason: str) -> None:
        for hold in holds:
            try:
                await self.credits.release(hold.id, f"release:{hold.id}", reason)
            except Exception as exc:  # the hold's expiry frees it anyway
                log.warning("generation_release_failed", holdId=hold.id, error=repr(exc))

    # --- reading and waiting ---------------------------------------------------------------------------------

    async def outcome(self, user_id: str, job_id: str) -> Outcome:
        async with self.db.unit_of_work() as session:
            job = await service.get(session, user_id, job_id)
            summary = await service.out(session, job)
            # Only a finished job's avatars are answered (a running job's rows may hold provider bytes: not read).
            avatars = await service.paid_avatars(session, job_id) if job.status in TERMINAL else []
        return Outcome(summary, avatars)

    async def wait(self, user_id: str, job_id: str, seconds: float) -> Outcome:
        """The job once it is finished, or as it is when `seconds` have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        with self.signals.watch(job_id) as wake:
            while True:
                wake.clear()
                found = await self.outcome(user_id, job_id)
                left = deadline - loop.time()
                if found.finished or left <= 0:
                    return found
                with suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(left, 1.0))

    async def stream(self, user_id: str, job_id: str, after: int) -> Callable[[], Any]:
        """The job's events after `after`, then each as it happens, until its terminal event (SSE)."""
        async with self.db.unit_of_work() as session:
            await service.get(session, user_id, job_id)  # another user's job: 404 before any byte
        keepalive = self.settings.sse_keepalive_seconds

        async def events() -> Any:
            last, loop = after, asyncio.get_running_loop()
            quiet_since = loop.time()
            with self.signals.watch(job_id) as wake:
                while True:
                    wake.clear()
                    async with self.db.unit_of_work() as session:
                        found = await service.events_after(session, job_id, last)
                        # Resumed after the terminal event (or past the end): nothing more will come.
                        finished = not found and (await service.get(session, user_id, job_id)).status in TERMINAL
                    if finished:
                        return
                    for seq, kind, data in found:
                        yield _sse(seq, kind, data)
                        last, quiet_since = seq, loop.time()
                        if kind in TERMINAL:
                            return
                    if found:
                        continue
                    quiet_for = loop.time() - quiet_since
                    with suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), max(0.0, min(1.0, keepalive - quiet_for)))
                    if loop.time() - quiet_since >= keepalive:
                        yield b": keepalive\n\n"
                        quiet_since = loop.time()

        return events

    # --- canceling -------------------------------------------------------------------------------------------

    async def cancel(self, user_id: str, job_id: str) -> GenerationOut:
        """Acknowledged only once no store is in flight (the job's lock): from then on nothing is stored or
        charged. An image whose store was cut short (a crash) is settled with avatars before its hold goes back:
        its avatar, or the promise that there will be none (a create of it still in flight is refused)."""
        async with self.db.unit_of_work() as session:
            job = await service.lock_for_user(session, user_id, job_id)
            if job.status not in TERMINAL:
                await self._resolve_storing(session, job)
                await service.terminate(session, self.settings, job, "canceled", "Canceled by the user")
            return await service.out(session, job)

    async def _resolve_storing(self, session: Any, job: Generation) -> None:
        for img in await service.images(session, job.id):
            if img.status == "storing":
                await self.settle_store(session, job, img, "the image was not stored")

    async def settle_store(self, session: Any, job: Generation, img: GenerationImage, reason: str) -> None:
        """A store that will not be (re)tried: stored if avatars made the avatar, else failed for `reason`, and
        avatars then refuses a create of it still in flight (its hold is about to go back)."""
        found = await self.avatars.settle_generated(job.user_id, job.project_id, img.id)
        if found is not None:
            await service.stored(session, job, img, found.avatar)
        else:
            await service.image_failed(session, job, img, reason)

    # --- previews --------------------------------------------------------------------------------------------

    async def preview(self, user_id: str, project_id: str, body: PreviewRequest) -> Preview:
        """Spec §3.2 phase one: an image to look at, through the same pipeline as uploads; free, nothing kept."""
        await self.projects.ensure_owned(user_id, project_id)
        prompt = enhance(body.prompt)
        request = image_request(self.settings, prompt, NEGATIVE_PROMPT, random.randint(0, MAX_SEED))
        try:
            made = await self.provider.generate(request)
            processed = await self.avatars.preview_image(base64.b64encode(made.data).decode())
        except ProviderError as exc:
            raise GenerationFailed(exc.reason) from exc
        except ImageRefused as exc:
            raise GenerationFailed(f"the provider's image was refused ({exc.message})") from exc
        return Preview(
            image_base64=processed.image_base64,
            thumbnail_base64=processed.thumbnail_base64,
            enhanced_prompt=prompt,
            metadata=PreviewMetadata(
                provider=made.provider,
                model=made.model,
                seed=made.seed,
                width=processed.width,
                height=processed.height,
                steps=made.steps,
                guidance=made.guidance,
                lora=made.lora,
            ),
        )

    # --- running (workers) -----------------------------------------------------------------------------------

    async def run(self, job_id: str) -> None:
        """Runs or resumes the job; a copy of the command for a job that is finished or running elsewhere does
        nothing. Idempotent per image: what is kept or stored is never asked for again."""
        owner = f"{self.worker_id}:{new_id()}"
        async with self.db.unit_of_work() as session:
            job = await service.claim(session, self.settings, job_id, owner, utcnow())
            if job is None:
                return
            images = [i for i in await service.images(session, job_id) if i.status not in ("stored", "failed")]
        lost = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(job_id, owner, lost))
        run = _Run(self, job, owner, lost)
        try:
            for img in images:  # stores cut short first: until they are resolved no other image takes a hold
                if img.status == "storing":
                    await run.image(img)
            async with asyncio.TaskGroup() as group:  # one failing image (avatars down) stops the others
                for img in images:
                    if img.status != "storing":
                        group.create_task(run.image(img))
            async with self.db.unit_of_work() as session:
                current = await service.owned(session, job_id, owner)
                if current is not None and not await service.unfinished_images(session, job_id):
                    await service.finish(session, self.settings, current)
        except BaseException:
            # Let the next delivery take over at once instead of waiting for the lease to run out.
            with suppress(Exception):
                async with self.db.unit_of_work() as session:
                    if (current := await service.owned(session, job_id, owner)) is not None:
                        current.lease_until = utcnow()
            raise
        finally:
            heartbeat.cancel()
            with suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, job_id: str, owner: str, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                async with self.db.unit_of_work() as session:
                    if not await service.renew(session, self.settings, job_id, owner):
                        lost.set()  # canceled, or taken over: stop asking the provider
                        return
            except Exception as exc:
                log.warning("generation_lease_renewal_failed", generationId=job_id, error=repr(exc))

    # --- sweeping (workers) ----------------------------------------------------------------------------------

    async def sweep(self) -> bool:
        async with self.db.unit_of_work() as session:
            moved = await service.redispatch_stalled(session, self.settings, utcnow())
        async with self.db.unit_of_work() as session:
            unsettled = await service.unsettled(session)
        for job_id in unsettled:
            async with self.db.unit_of_work() as session:
                job = await service.lock(session, job_id)
                if job is None or job.settled:
                    continue
                await self._resolve_storing(session, job)
                await service.settle(session, self.settings, job)
        async with self.db.unit_of_work() as session:
            await service.forget_settled(session)
        return moved >= 100


@dataclass
class _Run:
    """One claim of a job by one worker."""

    flows: GenerationWorkflows
    job: Generation
    owner: str
    lost: asyncio.Event
    store_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    calls: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.calls = asyncio.Semaphore(self.flows.settings.images_in_parallel)

    async def _owned(self, action: Callable[[Any, Generation], Awaitable[T]]) -> T | None:
        async with self.flows.db.unit_of_work() as session:
            job = await service.owned(session, self.job.id, self.owner)
            if job is None:
                return None
            return await action(session, job)

    async def image(self, img: GenerationImage) -> None:
        made: ProviderImage | None = None
        if img.status == "pending":
            made = await self._ask_provider(img)
            if made is None:
                return
            if self.store_lock.locked():  # another image is being stored: keep these bytes while this one waits
                fresh = made
                if not await self._owned(lambda s, j: self._keep(s, img.id, fresh)):
                    return
                made = None
        async with self.store_lock:
            await self._store(img.id, made)

    async def _ask_provider(self, img: GenerationImage) -> ProviderImage | None:
        flows, job = self.flows, self.job
        async with self.calls:
            if self.lost.is_set():
                return None
            if utcnow() >= job.deadline:
                await self._owned(lambda s, j: self._failed(s, j, img.id, "generation timed out"))
                return None
            request = image_request(flows.settings, job.enhanced_prompt, NEGATIVE_PROMPT, img.seed)
            try:
                return await flows.provider.generate(request)
            except ProviderError as exc:
                reason = exc.reason
                await self._owned(lambda s, j: self._failed(s, j, img.id, reason))
                return None

    async def _keep(self, session: Any, image_id: str, made: ProviderImage) -> GenerationImage:
        """The provider's bytes, kept: a resumed job stores them instead of asking the provider again."""
        img = await service.image(session, image_id)
        if img.status == "pending":
            service.received(img, made.data, made.provider, made.model)
        return img

    async def _failed(self, session: Any, job: Generation, image_id: str, reason: str) -> None:
        await service.image_failed(session, job, await service.image(session, image_id), reason)

    async def _store(self, image_id: str, made: ProviderImage | None) -> None:
        """`made`: bytes just received and not kept yet; they are kept in the transaction that assigns the hold
        (one round trip less on the way to the avatar)."""

        async def assign(session: Any, job: Generation) -> tuple[GenerationImage, bytes] | None:
            img = (
                await self._keep(session, image_id, made)
                if made is not None
                else await service.image(session, image_id)
            )
            if img.status not in ("received", "storing") or img.data is None:
                return None
            await service.assign_hold(session, job, img)
            return img, img.data

        assigned = await self._owned(assign)
        if assigned is None or assigned[0].hold_index is None:
            return
        hold_id, data = self.job.hold_ids[assigned[0].hold_index], assigned[1]
        await self._owned(lambda s, j: self._create_avatar(s, j, image_id, hold_id, data))

    async def _create_avatar(self, session: Any, job: Generation, image_id: str, hold_id: str, data: bytes) -> None:
        """Under the job's lock: the avatar (and its capture) is made, or the job was canceled before."""
        img = await service.image(session, image_id)
        if img.status != "storing":
            return
        if utcnow() >= job.deadline:  # too late to make it: its capture could come after the hold expired
            await self.flows.settle_store(session, job, img, "generation timed out")
            if not await service.unfinished_images(session, job.id):
                await service.finish(session, self.flows.settings, job)
            return
        request = job.request
        try:
            made = await self.flows.avatars.create_generated(
                GeneratedAvatarRequest(
                    avatar_id=img.id,
                    user_id=job.user_id,
                    project_id=job.project_id,
                    hold_id=hold_id,
                    name=request["name"],
                    generation_prompt=request["prompt"],
                    seed_used=img.seed,
                    gender=request.get("gender"),
                    age_range=request.get("age_range"),
                    style=request.get("style"),
                    ethnicity=request.get("ethnicity"),
                    body_type=request.get("body_type"),
                    image_base64=base64.b64encode(data).decode(),
                    capture_by=job.deadline + timedelta(seconds=self.flows.settings.hold_margin_seconds),
                )
            )
        except ImageGivenUp:  # a cancel or the sweep settled it while this store was cut short elsewhere
            await service.image_failed(session, job, img, "the image was not stored")
            return
        except ImageRefused as exc:
            await service.image_failed(session, job, img, f"the provider's image was refused ({exc.message})")
            return
        except ProjectGone:
            await service.image_failed(session, job, img, "Project deleted")
            await service.terminate(session, self.flows.settings, job, "canceled", "Project deleted")
            self.lost.set()
            return
        await service.stored(session, job, img, made.avatar)
        if not await service.unfinished_images(session, job.id):
            # The last image: the job ends in the same commit (the waiting request wakes once, with the outcome).
            await service.finish(session, self.flows.settings, job)


def _sse(seq: int, kind: str, data: dict[str, Any]) -> bytes:
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
