"""Image safety and processing: nothing the client says about a file is trusted.

The format comes from the bytes (JPEG, PNG or WebP only), the pixel count and side lengths are checked from
the header before anything is decoded, and what gets stored is always a fresh encoding of the decoded pixels:
EXIF orientation applied, metadata (EXIF, GPS, XMP, comments, anything appended after the image) dropped.
Only the ICC colour profile is kept, since dropping it shifts the colours of wide-gamut phone photos.

Everything here is CPU-bound and synchronous but `process`, which runs it in worker threads.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from lumiku_common.errors import BadRequest

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
)
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}


class InvalidFileType(BadRequest):
    message = "Invalid file type"  # the spec's exact message; JPEG, PNG and WebP are accepted


class CorruptImage(BadRequest):
    message = "Invalid or corrupt image"


class ImageTooLarge(BadRequest):
    pass


@dataclass(frozen=True, slots=True)
class Limits:
    max_pixels: int
    max_side: int
    thumbnail_size: int = 200
    jpeg_quality: int = 90


@dataclass(frozen=True, slots=True)
class Encoded:
    data: bytes
    extension: str  # matches the bytes: ".jpg", ".png" or ".webp"
    width: int
    height: int


def configure(max_pixels: int) -> None:
    """Pillow's own bomb guard is process-wide; align it with our cap and make its warning an error."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def sniff(data: bytes) -> str:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    raise InvalidFileType()


def _open(data: bytes, fmt: str, limits: Limits) -> Image.Image:
    """Reads only the header: format and dimensions are checked before any pixel is decoded."""
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(limits) from exc
    except Exception as exc:  # any decoder failure on untrusted bytes is the client's bad input
        raise CorruptImage() from exc
    width, height = im.size
    if width < 1 or height < 1:
        raise CorruptImage()
    if width * height > limits.max_pixels:
        raise _too_many_pixels(limits)
    if max(width, height) > limits.max_side:
        raise ImageTooLarge(f"Image dimensions too large (max {limits.max_side} pixels per side)")
    return im


def _too_many_pixels(limits: Limits) -> ImageTooLarge:
    return ImageTooLarge(f"Image too large (max {limits.max_pixels // 1_000_000} megapixels)")


def _decode(im: Image.Image) -> Image.Image:
    """Loads the first frame (animations keep only it), upright, in a mode every encoder accepts."""
    try:
        im.seek(0)
        im.load()
        upright = ImageOps.exif_transpose(im)
    except Exception as exc:
        raise CorruptImage() from exc
    clean = _normalized(upright)
    # Encoders fall back to `info` for EXIF/XMP/comments in some versions; leave them nothing to copy.
    clean.info = {}
    return clean


def _normalized(im: Image.Image) -> Image.Image:
    if im.mode in ("RGB", "L") and "transparency" in im.info:
        return im.convert("LA" if im.mode == "L" else "RGBA")
    if im.mode in ("RGB", "RGBA", "L", "LA"):
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        # Converting straight to L clips everything above 255; scale 16-bit samples down instead.
        return im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("PA", "RGBa", "La"):
        return im.convert("RGBA")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, 1, ...


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA")


def _encode(im: Image.Image, fmt: str, icc: bytes | None, quality: int) -> Encoded:
    out = io.BytesIO()
    extra = {"icc_profile": icc} if icc else {}
    if fmt == "JPEG":
        im = im.convert("RGB") if _has_alpha(im) else im
        im.save(out, "JPEG", quality=quality, **extra)
    elif fmt == "PNG":
        im.save(out, "PNG", compress_level=4, **extra)
    else:
        im.save(out, "WEBP", quality=quality, method=4, **extra)
    return Encoded(out.getvalue(), _EXTENSIONS[fmt], im.width, im.height)


def make_original(data: bytes, limits: Limits) -> Encoded:
    """The stored original: same format family as uploaded, re-encoded from pixels, metadata stripped."""
    fmt = sniff(data)
    im = _open(data, fmt, limits)
    icc = im.info.get("icc_profile")
    return _encode(_decode(im), fmt, icc, limits.jpeg_quality)


def make_thumbnail(data: bytes, limits: Limits) -> Encoded:
    """A square cover crop of at most `thumbnail_size`, never larger than the source's short side."""
    fmt = sniff(data)
    im = _open(data, fmt, limits)
    icc = im.info.get("icc_profile")
    if fmt == "JPEG":
        # Fast path: libjpeg decodes at 1/2, 1/4 or 1/8 scale, still at least the thumbnail's size.
        im.draft(im.mode if im.mode in ("RGB", "L") else None, (limits.thumbnail_size, limits.thumbnail_size))
    upright = _decode(im)
    thumb = _cover(upright, limits.thumbnail_size)
    return _encode(thumb, "PNG" if _has_alpha(thumb) else "JPEG", icc, 85)


def _cover(im: Image.Image, size: int) -> Image.Image:
    width, height = im.size
    short = min(width, height)
    side = min(size, short)
    left, top = (width - short) / 2, (height - short) / 2
    box = (left, top, left + short, top + short)
    return im.resize((side, side), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


async def process(data: bytes, limits: Limits) -> tuple[Encoded, Encoded]:
    """Original and thumbnail in two threads: Pillow releases the GIL while decoding and encoding."""
    sniff(data)  # refuse non-images before starting two decoders
    original, thumbnail = await asyncio.gather(
        asyncio.to_thread(make_original, data, limits),
        asyncio.to_thread(make_thumbnail, data, limits),
    )
    return original, thumbnail
