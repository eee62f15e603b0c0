from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, StringConstraints

from lumiku_common.schemas import CamelModel, CleanStr, Pagination, RequestModel, UtcDatetime
from lumiku_generation.models import Generation

Gender = Literal["male", "female", "unisex"]
AgeRange = Literal["young", "adult", "mature"]
Style = Literal["casual", "formal", "sporty", "professional", "traditional"]
BodyType = Literal["half_body", "full_body"]
Status = Literal["queued", "running", "succeeded", "partially_succeeded", "failed", "canceled"]

Prompt = Annotated[CleanStr, StringConstraints(min_length=10, max_length=500)]
Name = Annotated[CleanStr, StringConstraints(min_length=1, max_length=100)]
Ethnicity = Annotated[CleanStr, StringConstraints(max_length=50)]


class Attributes(RequestModel):
    gender: Gender | None = None
    age_range: AgeRange | None = None
    style: Style | None = None
    ethnicity: Ethnicity | None = None
    body_type: BodyType | None = None


class GenerateRequest(Attributes):
    """Spec §3.2 / §13.2 `generateAvatarSchema`; `count` is a whole number of variations."""

    prompt: Prompt = Field(examples=["Professional Indonesian woman with hijab, smiling, business attire"])
    name: Name = Field(examples=["Siti Rahman"])
    count: Annotated[StrictInt, Field(ge=1, le=5)] | None = None


class PreviewRequest(Attributes):
    prompt: Prompt = Field(examples=["Casual young man, t-shirt, smiling"])


class GenerationOut(CamelModel):
    id: str
    project_id: str
    status: Status
    count: int
    produced: int
    avatar_ids: list[str]
    cost: int
    charged: int
    refunded: int
    error: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None

    @classmethod
    def of(cls, job: Generation, avatar_ids: list[str]) -> GenerationOut:
        return cls(
            id=job.id,
            project_id=job.project_id,
            status=job.status,  # type: ignore[arg-type]
            count=job.count,
            produced=job.produced,
            avatar_ids=avatar_ids,
            cost=job.cost,
            charged=job.charged,
            refunded=job.refunded,
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class GenerationResponse(CamelModel):
    success: bool = True
    generation: GenerationOut


class GeneratedResponse(CamelModel):
    """201 of the synchronous generate: the avatars as `GET /avatars/:id` shows them."""

    success: bool = True
    avatar: dict[str, Any]
    avatars: list[dict[str, Any]]
    generation: GenerationOut
    message: str = "Avatar generated successfully"


class GenerationListResponse(CamelModel):
    success: bool = True
    generations: list[GenerationOut]
    pagination: Pagination


class PreviewMetadata(CamelModel):
    provider: str
    model: str
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    lora: str | None = None


class Preview(CamelModel):
    image_base64: str
    thumbnail_base64: str
    enhanced_prompt: str
    metadata: PreviewMetadata


class PreviewResponse(CamelModel):
    success: bool = True
    preview: Preview
    message: str = "Preview generated successfully. Review and save if you like it."
