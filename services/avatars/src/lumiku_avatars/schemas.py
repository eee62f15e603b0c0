from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, field_validator

from lumiku_common.schemas import CamelModel, Pagination, RequestModel, UtcDatetime, _no_nul

Gender = Literal["male", "female", "unisex"]
AgeRange = Literal["young", "adult", "mature"]
# The upload form lists three styles, AI generation five; one set keeps an avatar editable whatever made it.
Style = Literal["casual", "formal", "sporty", "professional", "traditional"]
BodyType = Literal["half_body", "full_body"]
SourceType = Literal["upload", "ai_generated"]


def _text(min_length: int | None, max_length: int) -> Any:
    return (
        StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length),
        AfterValidator(_no_nul),
    )


# Spelled out (not `lumiku_common.schemas.text(...)`) so type checkers see real type aliases.
Name = Annotated[str, *_text(1, 100)]
Short = Annotated[str, *_text(None, 50)]
Medium = Annotated[str, *_text(None, 100)]
Long = Annotated[str, *_text(None, 2000)]


class AvatarAttributes(RequestModel):
    """Optional descriptive fields shared by upload and update; the persona/visual ones come from older clients."""

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


class AvatarUploadFields(AvatarAttributes):
    name: Name

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: Any, info: Any) -> Any:
        # Browsers send "" for every untouched form control; for optional fields that means "not given".
        if value == "" and info.field_name != "name":
            return None
        return value


class SavePreviewRequest(AvatarAttributes):
    """Phase two of AI generation (spec §3.2): keep a preview the user liked as an avatar."""

    name: Name
    image_base64: str  # a data URL or bare base64; what it decodes to is checked like an upload
    thumbnail_base64: str | None = None  # accepted from older clients, never trusted: we make our own
    generation_prompt: Long | None = None


class AvatarUpdate(AvatarAttributes):
    name: Name | None = None


class AvatarOut(CamelModel):
    id: str
    user_id: str
    project_id: str
    name: str
    base_image_url: str
    thumbnail_url: str | None
    gender: str | None
    age_range: str | None
    style: str | None
    ethnicity: str | None
    body_type: str | None
    generation_prompt: str | None
    source_type: str
    persona_name: str | None
    persona_age: int | None
    persona_personality: str | None
    persona_background: str | None
    hair_style: str | None
    hair_color: str | None
    eye_color: str | None
    skin_tone: str | None
    seed_used: int | None
    image_width: int | None
    image_height: int | None
    usage_count: int
    last_used_at: UtcDatetime | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class AvatarWithProject(AvatarOut):
    project: dict[str, Any]


class AvatarResponse(CamelModel):
    success: bool = True
    avatar: AvatarOut
    message: str | None = None


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


class AvatarsByProject(CamelModel):
    avatars: dict[str, list[AvatarOut]]
