from typing import Self

from pydantic import Field, model_validator

from lumiku_common.settings import ServiceSettings, StorageSettings


class AvatarsSettings(ServiceSettings, StorageSettings):
    service_name: str = "avatars"
    database_name: str = "lumiku_avatars"

    max_upload_bytes: int = 10 * 1024 * 1024  # the spec's 10 MB, counted while the body streams in
    # An upload's multipart body, or save-preview's base64 of one (4/3 of it), and their fields.
    max_request_body_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 40_000_000  # checked from the header, before any decoding
    max_image_side: int = 65_535  # JPEG's own limit; the decoded-bytes budget is what bounds memory
    # The most pixel memory one upload may hold at its peak, estimated from the header before decoding (decoder
    # buffers and the worst conversion step included). 200 MiB admits a 24 MP phone photo with EXIF rotation
    # (4 bytes a pixel, twice while it turns), an upright 40 MP photo, a 40 MP 16-bit greyscale PNG and a
    # 12 MP WebP (libwebp needs 16 bytes a pixel).
    max_decoded_bytes: int = 200 * 1024 * 1024
    # All uploads of one process decoding at once stay within this: two 12 MP rotated photos, or a 24 MP one and
    # a 12 MP one, decode side by side; larger ones take turns. Beside the service itself and in-flight 10 MB
    # bodies it fits the pod's 768 Mi limit.
    decode_memory_bytes: int = 288 * 1024 * 1024
    max_icc_bytes: int = 64 * 1024  # a larger profile is applied to the original's pixels, not stored
    thumbnail_size: int = 200
    jpeg_quality: int = 90

    upload_cost: int = 10  # the spec's createAvatar credits
    save_preview_cost: int = 15  # the spec's savePreview credits
    credit_hold_ttl_seconds: int = 300  # an upload that dies without releasing frees its hold by then
    # Given-up images and deleted projects are remembered this long (see main.retained).
    tombstone_retention_days: float = Field(14, ge=1)

    object_purge_interval_seconds: float = 30.0  # safety net for deletions whose post-commit purge was missed
    orphan_sweep_interval_seconds: float = 3600.0
    orphan_grace_seconds: float = 3600.0  # objects younger than this may belong to an upload still committing

    @model_validator(mode="after")
    def _an_upload_fits_the_body_limit(self) -> Self:
        if self.max_request_body_bytes < self.max_upload_bytes * 4 // 3 + 64 * 1024:
            raise ValueError("MAX_REQUEST_BODY_BYTES must hold save-preview's base64 of MAX_UPLOAD_BYTES (4/3 of it)")
        return self
