from lumiku_common.settings import ServiceSettings, StorageSettings


class AvatarsSettings(ServiceSettings, StorageSettings):
    service_name: str = "avatars"
    database_name: str = "lumiku_avatars"

    max_upload_bytes: int = 10 * 1024 * 1024  # the spec's 10 MB, counted while the body streams in
    max_image_pixels: int = 40_000_000  # checked from the header, before any decoding
    max_image_side: int = 65_535  # JPEG's own limit; the pixel cap is what bounds memory
    thumbnail_size: int = 200
    jpeg_quality: int = 90

    upload_cost: int = 10  # the spec's createAvatar credits
    save_preview_cost: int = 15  # the spec's savePreview credits
    credit_hold_ttl_seconds: int = 300  # an upload that dies without releasing frees its hold by then

    object_purge_interval_seconds: float = 30.0  # safety net for deletions whose post-commit purge was missed
    orphan_sweep_interval_seconds: float = 3600.0
    orphan_grace_seconds: float = 3600.0  # objects younger than this may belong to an upload still committing
