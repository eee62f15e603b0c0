"""Client of the avatars service's internal routes, and their contract.

GET BY_PROJECTS?userId=U&projectIds=a,b&limitPerProject=N   (service token)
    200 AvatarsByProject: the newest N avatars of each listed project of U, as the public API shows them
GET owner_path(avatar id)   (service token)
    200 AvatarOwner   when the avatar exists (usage's fallback when its projection has not seen it yet)
    404 {"error": "Avatar not found"}   otherwise (deleted, or never existed)

Generated avatars (the generation service; see the section below):
POST GENERATED  GeneratedAvatarRequest
    201 GeneratedAvatarResponse  the avatar, created from the provider's image with `avatarId` = the image's id,
                                 and the capture of `holdId` staged through avatars' outbox in the same transaction
    200 GeneratedAvatarResponse  an avatar with that id exists already: nothing done again (idempotent)
    400 {"error"}                the image is no acceptable image (the upload pipeline refused it)
    404 {"error"}                the project was deleted meanwhile
    410 {"error"}                the image was given up (below): no avatar is made from it
    503 {"error"}                it could not be done before `captureBy` (when the hold stops being capturable):
                                 an avatar committed later would be free, so none was made
POST settle_path(image id)  SettleGeneratedRequest
    200 GeneratedAvatarResponse  the image became that avatar
    410 {"error"}                it did not, and now never will: a create of it still in flight is refused (the
                                 two are serialised), so its hold can be released without leaving a free avatar
POST PREVIEW_IMAGES  PreviewImageRequest → 200 PreviewImage: the provider's image through the upload pipeline
    (sniffed, decoded, re-encoded, stripped, thumbnailed) and nothing stored; 400 as above
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from lumiku_common.errors import BadRequest, NotFound, ServiceUnavailable
from lumiku_common.internal import InternalClient, InternalResponse
from lumiku_common.schemas import CamelModel, CleanStr, RequestModel

BY_PROJECTS = "/internal/avatars/by-projects"
MAX_PROJECTS = 100

# An avatar exactly as `GET /avatars/:id` shows it (camelCase JSON): the gateway embeds it without re-reading.
AvatarJson = dict[str, Any]


class ByProjectsQuery(BaseModel):
    model_config = ConfigDict(validate_by_name=True)

    user_id: Annotated[str, Field(alias="userId", min_length=1, max_length=128)]
    project_ids: Annotated[str, Field(alias="projectIds", max_length=MAX_PROJECTS * 33)] = ""
    limit_per_project: Annotated[int, Field(alias="limitPerProject", ge=1, le=100)] = 10

    @field_validator("project_ids")
    @classmethod
    def _at_most_100(cls, value: str) -> str:
        if len(value.split(",")) > MAX_PROJECTS:
            raise ValueError(f"At most {MAX_PROJECTS} projectIds")
        return value

    @property
    def ids(self) -> list[str]:
        return list(dict.fromkeys(p for p in self.project_ids.split(",") if p))


class AvatarsByProject(CamelModel):
    avatars: dict[str, list[AvatarJson]]


# --- owner lookup -------------------------------------------------------------------------------------------

OWNERS = "/internal/avatars"


def owner_path(avatar_id: str) -> str:
    return f"{OWNERS}/{avatar_id}/owner"


class AvatarNotFound(NotFound):
    message = "Avatar not found"


class AvatarOwner(CamelModel):
    avatar_id: str
    user_id: str
    project_id: str


# --- the client ------------------------------------------------------------------------------------------


class AvatarsClient:
    def __init__(self, client: InternalClient):
        self.client = client

    async def newest_by_project(self, user_id: str, project_ids: list[str], per_project: int) -> AvatarsByProject:
        query = ByProjectsQuery(user_id=user_id, project_ids=",".join(project_ids), limit_per_project=per_project)
        response = await self.client.request("GET", BY_PROJECTS, params=query.model_dump(by_alias=True))
        if response.status_code != 200:
            raise ServiceUnavailable()
        return AvatarsByProject.model_validate_json(response.content)

    async def owner(self, avatar_id: str) -> AvatarOwner | None:
        """Who owns the avatar; None if it does not exist. ServiceUnavailable when avatars cannot say."""
        response = await self.client.request("GET", owner_path(quote(avatar_id, safe="")))
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ServiceUnavailable()
        return AvatarOwner.model_validate_json(response.content)

    async def create_generated(self, request: GeneratedAvatarRequest) -> GeneratedAvatarResponse:
        response = await self.client.request("POST", GENERATED, json=request.model_dump(mode="json", by_alias=True))
        return _generated(response.status_code, response.content, _payload(response))

    async def settle_generated(self, user_id: str, project_id: str, image_id: str) -> GeneratedAvatarResponse | None:
        """The avatar made from this image; None if there is none, and then there never will be."""
        body = SettleGeneratedRequest(user_id=user_id, project_id=project_id).model_dump(by_alias=True)
        response = await self.client.request("POST", settle_path(quote(image_id, safe="")), json=body)
        if response.status_code == 200:
            return GeneratedAvatarResponse.model_validate_json(response.content)
        if response.status_code == 410:
            return None
        raise ServiceUnavailable()

    async def preview_image(self, image: str) -> PreviewImage:
        response = await self.client.request("POST", PREVIEW_IMAGES, json={"imageBase64": image})
        if response.status_code == 200:
            return PreviewImage.model_validate_json(response.content)
        if response.status_code in (400, 413):
            raise ImageRefused(_payload(response).get("error"))
        raise ServiceUnavailable()

    async def aclose(self) -> None:
        await self.client.aclose()


def _payload(response: InternalResponse) -> dict[str, Any]:
    if not response.headers.get("content-type", "").startswith("application/json"):
        return {}
    body = response.json()
    return body if isinstance(body, dict) else {}


def _generated(status: int, content: bytes, payload: dict[str, Any]) -> GeneratedAvatarResponse:
    if status in (200, 201):
        return GeneratedAvatarResponse.model_validate_json(content)
    if status == 410:
        raise ImageGivenUp(payload.get("error"))
    if status in (400, 413):
        raise ImageRefused(payload.get("error"))
    if status == 404:
        raise ProjectGone(payload.get("error"))
    raise ServiceUnavailable()


# --- generated avatars: the generation service's images become avatars here ----------------------------------
#
# Every provider image goes through the same pipeline as an upload (format from the bytes, pixel and memory
# caps before decoding, re-encoded, metadata stripped, thumbnail), in the avatars service, which owns image
# objects and its process's decode memory budget. The generation service never decodes pixels.

GENERATED = "/internal/avatars/generated"
PREVIEW_IMAGES = "/internal/avatars/preview-images"
MAX_IMAGE_BASE64 = 14 * 1024 * 1024  # 10 MB of image, base64-encoded


def settle_path(image_id: str) -> str:
    return f"{GENERATED}/{image_id}/settle"


class ImageRefused(BadRequest):
    message = "The image is not an acceptable image"


class ImageGivenUp(ImageRefused):
    message = "The generation gave this image up: no avatar is made from it"


class ProjectGone(NotFound):
    message = "Project not found"


_Text100 = Annotated[CleanStr, StringConstraints(min_length=1, max_length=100)]
_Short = Annotated[CleanStr, StringConstraints(max_length=50)]


class GeneratedAvatarRequest(RequestModel):
    avatar_id: Annotated[str, Field(min_length=1, max_length=32)]  # the image's id: the idempotency key
    user_id: Annotated[str, Field(min_length=1, max_length=128)]
    project_id: Annotated[str, Field(min_length=1, max_length=32)]
    hold_id: Annotated[str, Field(min_length=1, max_length=64)]  # captured whole, with the avatar
    name: _Text100
    generation_prompt: Annotated[str, Field(max_length=2000)]
    seed_used: Annotated[int, Field(ge=0, le=2**63 - 1)]
    gender: Literal["male", "female", "unisex"] | None = None
    age_range: Literal["young", "adult", "mature"] | None = None
    style: Literal["casual", "formal", "sporty", "professional", "traditional"] | None = None
    ethnicity: _Short | None = None
    body_type: Literal["half_body", "full_body"] | None = None
    image_base64: Annotated[str, Field(max_length=MAX_IMAGE_BASE64)]
    # When the hold stops being capturable (its expiry); None: no limit.
    capture_by: AwareDatetime | None = None


class SettleGeneratedRequest(RequestModel):
    user_id: Annotated[str, Field(min_length=1, max_length=128)]
    project_id: Annotated[str, Field(min_length=1, max_length=32)]


class GeneratedAvatarResponse(CamelModel):
    avatar: AvatarJson
    created: bool  # False: it existed already (a retry)


class PreviewImageRequest(RequestModel):
    image_base64: Annotated[str, Field(max_length=MAX_IMAGE_BASE64)]


class PreviewImage(CamelModel):
    image_base64: str  # data URLs of the re-encoded image and its thumbnail
    thumbnail_base64: str
    width: int
    height: int
