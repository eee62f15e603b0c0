"""The single definition of every integration event and command, and the envelope that carries them.

Each event is a versioned pydantic model; its `type` is also its routing key on `lumiku.events`.
A breaking change to an event's data gets a new `version` and a new model; consumers accept both for a while.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, StrictInt, StringConstraints

from lumiku_common.ids import new_id
from lumiku_common.schemas import CamelModel, NoControl, NulFreeModel, UtcDatetime


class Event(CamelModel):
    type: ClassVar[str]
    version: ClassVar[int] = 1
    # A command is work its consumer must do (a charge, a job to run): published while no queue takes it, it is not
    # sent but retried (see OutboxRelay), where an event nobody reads yet is confirmed and dropped.
    command: ClassVar[bool] = False


class Envelope(CamelModel):
    # The dedup key of every consumer (its inbox keeps up to 64 characters).
    id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    type: str
    version: int = 1
    source: str
    time: UtcDatetime
    subject: str | None = None
    user_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    data: dict[str, Any]

    def parse(self) -> Event:
        model = EVENT_TYPES.get((self.type, self.version))
        if model is None:
            raise UnknownEvent(f"no model for {self.type} v{self.version}")
        return model.model_validate(self.data)


class UnknownEvent(ValueError):
    pass


# --- projects -----------------------------------------------------------------------------------------


class ProjectCreated(Event):
    type = "project.created"
    project_id: str
    name: str
    description: str | None = None


class ProjectUpdated(Event):
    type = "project.updated"
    project_id: str
    name: str
    description: str | None = None


class ProjectDeleted(Event):
    type = "project.deleted"
    project_id: str


# --- avatars ------------------------------------------------------------------------------------------


SourceType = Literal["upload", "ai_generated"]


class AvatarCreated(Event):
    type = "avatar.created"
    avatar_id: str
    project_id: str
    name: str
    source_type: SourceType


class AvatarUpdated(Event):
    type = "avatar.updated"
    avatar_id: str
    project_id: str
    name: str


class AvatarDeleted(Event):
    type = "avatar.deleted"
    avatar_id: str
    project_id: str


# --- usage (sibling apps publish avatar.used straight to the broker) ------------------------------------


# What a use of an avatar says, for the HTTP API (track-usage) and the event alike.
Slug = Annotated[str, StringConstraints(min_length=1, max_length=50, pattern=r"^[a-z0-9]+(?:[-_.][a-z0-9]+)*$")]
AppName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Reference = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
MAX_METADATA_BYTES = 8 * 1024
MAX_METADATA_DEPTH = 32  # nested objects and arrays; pydantic's serializer gives up far deeper (a 500 once stored)


def _depth(value: Any) -> int:
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            if deepest > MAX_METADATA_DEPTH:
                return deepest
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _small_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return value
    if _depth(value) > MAX_METADATA_DEPTH:
        raise ValueError(f"metadata must nest at most {MAX_METADATA_DEPTH} levels")
    try:
        # NaN and ±Infinity (Python's JSON reader takes them, 1e999 too) are no JSON: PostgreSQL's jsonb refuses them.
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise ValueError("metadata must be plain JSON (no NaN or Infinity)") from exc
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return value


Metadata = Annotated[dict[str, Any] | None, AfterValidator(_small_metadata)]


class AvatarUsed(Event, NulFreeModel):  # published by other apps: checked as a request body is
    """Published by the sibling apps (Pose Generator, Poster Editor) straight to `lumiku.events`; the
    envelope's `userId` is the avatar's owner and its `id` the dedup key."""

    type = "avatar.used"
    avatar_id: Annotated[str, StringConstraints(min_length=1, max_length=64), NoControl]
    app_id: Slug
    app_name: AppName | None = None
    action: Slug
    reference_id: Reference | None = None
    reference_type: Reference | None = None
    metadata: Metadata = None
    used_at: UtcDatetime | None = None


class UsageRecorded(Event):
    type = "usage.recorded"
    usage_id: str
    avatar_id: str
    app_id: str
    action: str
    used_at: UtcDatetime


# --- credits: events ------------------------------------------------------------------------------------


class CreditsReserved(Event):
    type = "credits.reserved"
    hold_id: str
    amount: int
    reference_id: str
    reference_type: str
    expires_at: UtcDatetime


class CreditsCaptured(Event):
    type = "credits.captured"
    hold_id: str
    amount: int
    released: int
    reference_id: str
    reference_type: str
    balance: int


class CreditsReleased(Event):
    type = "credits.released"
    hold_id: str
    amount: int
    reference_id: str
    reference_type: str
    reason: str


class CreditsGranted(Event):
    type = "credits.granted"
    entry_id: str
    amount: int
    entry_type: str
    balance: int


class CreditsBalanceLow(Event):
    type = "credits.balance_low"
    available: int
    threshold: int


# --- credits: commands (sent through the caller's outbox, so a finished piece of work is always paid) ----


class CaptureCredits(Event):
    type = "credits.capture"
    command = True
    hold_id: str
    amount: StrictInt | None = None  # None: capture the whole hold; "15" or true is a broken sender
    idempotency_key: str


class ReleaseCredits(Event):
    type = "credits.release"
    command = True
    hold_id: str
    reason: str
    idempotency_key: str


# --- generation --------------------------------------------------------------------------------------------

GenerationStatus = Literal["queued", "running", "succeeded", "partially_succeeded", "failed", "canceled"]


class RunGeneration(Event):
    """Command to generation's own workers (its work queue): run, or resume, this job. Sent through the outbox
    when a job is created, when a user's running job ends (the next of theirs may start) and when a job's lease
    expired; a copy for a job that is running elsewhere or finished changes nothing."""

    type = "generation.run"
    command = True
    generation_id: str


class GenerationFinished(Event):
    """A generation job reached its terminal status and its credits are settled (`charged` + `refunded` =
    `cost`). No service of the suite consumes it (the job's client follows its SSE stream or reads
    `GET /generations/:id`); it is published for the sibling apps and notifications ("your avatars are ready")."""

    type = "generation.finished"
    generation_id: str
    project_id: str
    status: GenerationStatus
    count: int
    produced: int
    avatar_ids: list[str]
    cost: int
    charged: int
    refunded: int
    error: str | None = None


EVENT_TYPES: dict[tuple[str, int], type[Event]] = {
    (cls.type, cls.version): cls
    for cls in (
        ProjectCreated,
        ProjectUpdated,
        ProjectDeleted,
        AvatarCreated,
        AvatarUpdated,
        AvatarDeleted,
        AvatarUsed,
        UsageRecorded,
        CreditsReserved,
        CreditsCaptured,
        CreditsReleased,
        CreditsGranted,
        CreditsBalanceLow,
        CaptureCredits,
        ReleaseCredits,
        RunGeneration,
        GenerationFinished,
    )
}

# The routing keys of commands (`Event.command`).
COMMAND_TYPES = frozenset(cls.type for cls in EVENT_TYPES.values() if cls.command)


def envelope_for(
    event: Event,
    *,
    source: str,
    time: datetime,
    user_id: str | None,
    subject: str | None,
    correlation_id: str | None,
    causation_id: str | None,
) -> Envelope:
    return Envelope(
        type=event.type,
        version=event.version,
        source=source,
        time=time,
        subject=subject,
        user_id=user_id,
        correlation_id=correlation_id,
        causation_id=causation_id,
        data=event.model_dump(mode="json"),
    )
