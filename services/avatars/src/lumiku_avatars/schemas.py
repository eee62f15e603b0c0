from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from asyncpg import Record
from pydantic import BaseModel, Field, StringConstraints, field_validator

from lumiku_avatars.models import Avatar
from lumiku_common.clients.projects import ProjectInfo
from lumiku_common.media import MediaUrls
from lumiku_common.schemas import CamelModel, CleanStr, Pagination, RequestModel, UtcDatetime

Gender = Literal["male", "female", "unisex"]
AgeRange = Literal["young", "adult", "mature"]
# The upload form lists three styles, AI generation five; one set keeps an avatar editable whatever made it.
Style = Literal["casual", "formal", "sporty", "professional", "traditional"]
BodyType = Literal["half_body", "full_body"]
SourceType = Literal["upload", "ai_generated"]


_EXAMPLE_PNG = "data:image/png;base64," + (
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGM8UaHBwMDAxMDAwMDAAAARqgFsecZ2JgAAAABJRU5ErkJggg=="
)

Name = Annotated[CleanStr, StringConstraints(min_length=1, max_length=100)]
Short = Annotated[CleanStr, StringConstraints(max_length=50)]
Medium = Annotated[CleanStr, StringConstraints(max_length=100)]
Long = Annotated[CleanStr, StringConstraints(max_length=2000)]


class AvatarAttributes(CamelModel):
    """The descriptive fields of an avatar, defined once: what upload, save-preview and update accept, and what
    every avatar response shows. The persona/visual ones come from older clients."""

    gender: Gender | None = None
    age_range: AgeRange | None = None
    style: Style | None = None
    ethnicity: Short | None = None
    body_type: BodyType | None = None
    persona_name: Medium | None = None
    persona_age: int | None = Field(None, ge=1, le=150)
    persona_personality: Long | None = None
    persona_background: Long | None = None
    hair_style: Short | None = None
    hair_color: Short | None = None
    eye_color: Short | None = None
    skin_tone: Short | None = None
    seed_used: int | None = Field(None, ge=0, le=2**63 - 1)


class AvatarUploadFields(RequestModel, AvatarAttributes):
    """The upload form's text fields (beside the `image` file part)."""

    name: Name

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: Any, info: Any) -> Any:
        # Browsers send "" for every untouched form control; for optional fields that means "not given".
        if value == "" and info.field_name != "name":
            return None
        return value


class SavePreviewRequest(RequestModel, AvatarAttributes):
    """Phase two of AI generation (spec §3.2): keep a preview the user liked as an avatar."""

    name: Name
    # A data URL or bare base64; what it decodes to is checked like an upload. The example (a 2x2 PNG) is one
    # a client can send as is: the docs' "try it" and schema fuzzing's examples create a real avatar with it.
    image_base64: str = Field(examples=[_EXAMPLE_PNG])
    thumbnail_base64: str | None = None  # accepted from older clients, never trusted: we make our own
    generation_prompt: Long | None = None


class AvatarUpdate(RequestModel, AvatarAttributes):
    name: Name | None = None


class AvatarOut(AvatarAttributes):
    id: str
    user_id: str
    project_id: str
    name: str
    base_image_url: str
    thumbnail_url: str | None
    generation_prompt: str | None
    source_type: SourceType
    image_width: int | None
    image_height: int | None
    usage_count: int
    last_used_at: UtcDatetime | None
    created_at: UtcDatetime
    updated_at: UtcDatetime

    @classmethod
    def of(cls, avatar: Avatar | Record, media: MediaUrls, **extra: Any) -> Self:
        """The avatar (an ORM object, or a record of the avatars table) as clients see it: storage keys become
        signed, expiring URLs."""
        if isinstance(avatar, Record):
            # Every column at once; the storage keys are not fields, so validation leaves them out.
            fields, keys = dict(avatar), (avatar["base_image_key"], avatar["thumbnail_key"])
        else:
            fields = {name: getattr(avatar, name) for name in cls.model_fields if hasattr(avatar, name)}
            keys = (avatar.base_image_key, avatar.thumbnail_key)
        return cls.model_validate(
            {**fields, "base_image_url": media.url(keys[0]), "thumbnail_url": media.url(keys[1]), **extra}
        )


class AvatarWithProject(AvatarOut):
    project: ProjectInfo


class AvatarResponse(CamelModel):
    success: bool = True
    avatar: AvatarOut
    message: str | None = None


class AvatarsByProjectOut(CamelModel):
    """What `lumiku_common.clients.avatars.AvatarsByProject` reads, typed here so it is serialised in one go."""

    avatars: dict[str, list[AvatarOut]]


class AvatarDetailResponse(CamelModel):
    success: bool = True
    avatar: AvatarWithProject


class AvatarListResponse(CamelModel):
    success: bool = True
    avatars: list[AvatarOut]
    pagination: Pagination


class AvatarFilters(BaseModel):
    """`GET /avatars` query: every filter optional; `search` matches the name, case-insensitively."""

    project_id: str | None = Field(None, alias="projectId", max_length=32)
    gender: Gender | None = None
    age_range: AgeRange | None = Field(None, alias="ageRange")
    style: Style | None = None
    source_type: SourceType | None = Field(None, alias="sourceType")
    search: str | None = Field(None, max_length=100)


class DeletedResponse(CamelModel):
    success: bool = True
    message: str


class AvatarStats(CamelModel):
    total_avatars: int
    total_usage: int
    created_last_7_days: int
    by_source_type: dict[str, int]
    by_project: dict[str, int]
    recent_uploads: list[AvatarOut]  # newest five uploads
    top_used: list[AvatarOut]  # five most used (usageCount > 0), most recently used first on ties


class StatsResponse(CamelModel):
    success: bool = True
    stats: AvatarStats
