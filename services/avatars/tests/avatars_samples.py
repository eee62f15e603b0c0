"""Small generated images for the avatars tests (big ones only where size is the point)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageDraw

from lumiku_devtools.testing import eventually

GPS_IFD = 0x8825
ORIENTATION = 0x0112


def picture(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A non-uniform picture, so crops and rotations are visible in the pixels: red left half, blue right."""
    im = Image.new("RGB", (width, height), (0, 0, 255))
    ImageDraw.Draw(im).rectangle((0, 0, width // 2 - 1, height - 1), fill=(255, 0, 0))
    return im.convert(mode)


def encode(im: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **options)
    return out.getvalue()


def jpeg(width: int = 320, height: int = 240, **options: object) -> bytes:
    return encode(picture(width, height), "JPEG", quality=85, **options)


def png(width: int = 320, height: int = 240, mode: str = "RGBA") -> bytes:
    return encode(picture(width, height, mode), "PNG")


def webp(width: int = 320, height: int = 240) -> bytes:
    return encode(picture(width, height), "WEBP")


def exif_jpeg(orientation: int | None = None, gps: bool = False, width: int = 300, height: int = 200) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    if orientation:
        exif[ORIENTATION] = orientation
    if gps:
        exif[GPS_IFD] = {1: "S", 2: (6.0, 10.0, 30.0), 3: "E", 4: (106.0, 49.0, 12.0)}
    return encode(picture(width, height), "JPEG", exif=exif.tobytes(), comment=b"secret comment")


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


async def events_about(spy: Any, event_type: str, subjects: set[str], timeout: float = 15) -> list[dict[str, Any]]:
    """Waits until `spy` has seen an `event_type` event for each of `subjects`; returns those events."""

    async def all_seen() -> list[dict[str, Any]]:
        found = [e for e in spy.of_type(event_type) if e["subject"] in subjects]
        return found if {e["subject"] for e in found} == subjects else []

    return await eventually(all_seen, timeout, what=f"{event_type} for {subjects}")
