"""Image safety and processing: nothing the client says about a file is trusted.

The format comes from the bytes (JPEG, PNG or WebP only); the pixel count, side lengths and the memory the
decode will take are checked from the header before anything is decoded; what gets stored is always a fresh
encoding of the decoded pixels: EXIF orientation applied, metadata (EXIF, GPS, XMP, comments, anything appended
after the image) dropped. An ICC colour profile is kept on the original only when it parses as one and is
small, since dropping it shifts the colours of wide-gamut phone photos; otherwise the pixels are converted to
sRGB (or the bytes that are no profile are dropped). Thumbnails are always sRGB and carry no profile.

Everything here is CPU-bound and synchronous but `process`, which runs it in worker threads once the decode's
memory fits in the process's `DecodeBudget`.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import io
import math
import struct
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageFile, ImageOps

from lumiku_common.errors import BadRequest

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
)
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
_ORIENTATION = 0x0112
_SRGB = ImageCms.createProfile("sRGB")
_MB = 1024 * 1024


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
    # What one upload may hold in pixel buffers at its peak; see AvatarsSettings.max_decoded_bytes.
    max_decoded_bytes: int = 200 * _MB
    max_icc_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class Encoded:
    data: bytes
    extension: str  # matches the bytes: ".jpg", ".png" or ".webp"
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class _Source:
    """What the checked header says about an upload, beside the opened (not yet decoded) image."""

    fmt: str
    icc: bytes | None
    profile: ImageCms.ImageCmsProfile | None  # `icc` when it parses as a colour profile
    orientation: int


def configure(max_pixels: int) -> None:
    """Process-wide settings, once at start-up. Pillow's own bomb guard is aligned with our cap and its warning
    made an error; and large allocations are kept out of glibc's heaps (below)."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    _fix_mmap_threshold()


_M_MMAP_THRESHOLD = -3


def _fix_mmap_threshold() -> None:
    """glibc raises its mmap threshold to the size of each mmapped block freed (up to 32 MB), so after the first
    big image, Pillow's 16 MB blocks and libwebp's buffers land in per-thread heaps that free() rarely hands
    back: the process kept 300 MB after three 16-bit PNGs. A fixed 1 MB threshold maps every large buffer on
    its own and unmaps it on free (measured: ~2 MB kept instead of 75-300 MB). Not glibc: nothing to do."""
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _MB)


def sniff(data: bytes) -> str:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    raise InvalidFileType()


# ---------------------------------------------------------------------------------------------------------------
# The header: format, dimensions, memory
# ---------------------------------------------------------------------------------------------------------------


def admit(data: bytes, limits: Limits) -> int:
    """Checks an upload from its header alone and returns the memory its decode will take at the peak; raises
    the client's error for anything that is no acceptable image. Cheap: nothing is decoded."""
    return _checked(data, limits)[2]


def _checked(data: bytes, limits: Limits) -> tuple[ImageFile.ImageFile, _Source, int]:
    fmt = sniff(data)
    im = _open(data, fmt, limits)
    _decode_16bit_grey_as_8bit(im)
    icc = im.info.get("icc_profile") or None
    src = _Source(fmt, icc, _parse_profile(icc), _header_orientation(im))
    peak = _peak_bytes(im, src, data, limits)
    if peak > limits.max_decoded_bytes:
        raise ImageTooLarge(f"Image too large to process (max {limits.max_decoded_bytes // _MB} MB decoded)")
    return im, src, peak


def _open(data: bytes, fmt: str, limits: Limits) -> ImageFile.ImageFile:
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


def _decode_16bit_grey_as_8bit(im: ImageFile.ImageFile) -> None:
    """16-bit greyscale PNGs decode to I;16 and then need scaling to 8 bits through 32-bit copies (10 bytes a
    pixel at the peak). Pillow's L;16B unpacker keeps each sample's high byte while decoding: the same scaling,
    straight into one byte a pixel. Its transparency is a 16-bit sample value, meaningless once scaled."""
    tile = im.tile[0] if len(im.tile) == 1 else None
    if im.format == "PNG" and im.mode == "I;16" and tile is not None and tile.args == "I;16B":
        im._mode = "L"
        im.tile = [tile._replace(args="L;16B")]
        im.info.pop("transparency", None)


def _parse_profile(icc: bytes | None) -> ImageCms.ImageCmsProfile | None:
    if not icc:
        return None
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except Exception:  # whatever lcms refuses is not a profile, just bytes riding along: they are dropped
        return None


def _header_orientation(im: Image.Image) -> int:
    """The EXIF orientation known from the header. PNG's getexif() would decode the whole image looking for an
    eXIf chunk after the pixels, which the PNG extension forbids and browsers ignore; so do we."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # unreadable EXIF is metadata we drop anyway
        return 1
    return orientation if orientation in range(1, 9) else 1


def _bytes_per_pixel(mode: str) -> int:
    """Pillow's storage: one byte for 8-bit single-band modes, two for 16-bit ones, four for everything else."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _peak_bytes(im: Image.Image, src: _Source, data: bytes, limits: Limits) -> int:
    """The most pixel memory one upload holds at once: each step of the pipeline keeps its input alive while it
    writes its output, so the peak is the largest input + output (+ the decoder's or encoder's own buffers)."""
    pixels = im.width * im.height
    decoded = pixels * _bytes_per_pixel(im.mode)
    target = _target_mode(im)
    normal = pixels * _bytes_per_pixel(target)
    steps = [decoded + _decoder_scratch(im, src.fmt, data), normal + _encoder_scratch(src.fmt, pixels)]
    if target != im.mode:
        steps.append(decoded + normal + (normal if im.mode.startswith("I;16") else 0))
    if src.orientation != 1:
        steps.append(2 * normal)
    if src.profile is not None and not _keeps_profile(src, target, limits):
        steps.append(normal + pixels * 4)
    return max(steps)


def _decoder_scratch(im: Image.Image, fmt: str, data: bytes) -> int:
    if fmt == "WEBP":
        # libwebp's animation decoder (Pillow's only WebP path) decodes into its own canvas, keeps the previous
        # one, and hands Pillow a copy of the frame as bytes: 12 bytes a pixel beside the image (measured).
        return im.width * im.height * 12
    if fmt == "JPEG" and _jpeg_buffers_coefficients(data):
        # Progressive and multi-scan JPEGs keep every DCT coefficient (2 bytes each) until the last scan.
        layers = getattr(im, "layer", [])
        h_max = max((h for _, h, _, _ in layers), default=1)
        v_max = max((v for _, _, v, _ in layers), default=1)
        blocks = (
            (math.ceil(im.width * h / h_max / 8) + 1) * (math.ceil(im.height * v / v_max / 8) + 1)
            for _, h, v, _ in layers
        )
        return sum(blocks) * 64 * 2
    return 0


def _encoder_scratch(fmt: str, pixels: int) -> int:
    """libwebp copies the pixels into its own ARGB picture and converts that to YUV, all at once."""
    return pixels * 6 if fmt == "WEBP" else 0


def _jpeg_buffers_coefficients(data: bytes) -> bool:
    """Whether libjpeg must buffer the whole image's coefficients: a progressive frame, or a first scan that
    carries only some of the components (the rest come in later scans)."""
    pos, components = 2, 0
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in (0xC2, 0xC6, 0xCA, 0xCE):
            return True
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            components = data[pos + 9] if pos + 9 < len(data) else 0
        if marker == 0xDA:
            return pos + 4 < len(data) and data[pos + 4] < components
        pos += 2 + length
    return False


# ---------------------------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------------------------


def _decode(im: ImageFile.ImageFile, src: _Source) -> Image.Image:
    """Loads the first frame (animations keep only it), upright, in a mode every encoder accepts."""
    try:
        im.seek(0)
        im.load()
    except Exception as exc:
        raise CorruptImage() from exc
    if src.fmt == "WEBP":
        _release_webp_decoder(im)
    clean = _normalized(im)
    if src.orientation != 1:
        ImageOps.exif_transpose(clean, in_place=True)  # in place: no copy of an image already upright
    # Encoders fall back to `info` for EXIF/XMP/comments in some versions; leave them nothing to copy.
    clean.info = {}
    return clean


def _release_webp_decoder(im: ImageFile.ImageFile) -> None:
    """A loaded WebP image still holds libwebp's decoder (its canvases) and the frame's bytes: 8 bytes a pixel
    that would otherwise live through both encodes. Only the first frame is ever used, so let them go. (The
    memory test's estimate check fails if a Pillow upgrade moves them elsewhere.)"""
    if im.fp is not None:
        im.fp.close()
        im.fp = None
    im.__dict__.pop("_decoder", None)


def _target_mode(im: Image.Image) -> str:
    transparent = "transparency" in im.info
    if im.mode in ("RGB", "L"):
        return ("LA" if im.mode == "L" else "RGBA") if transparent else im.mode
    if im.mode in ("RGBA", "LA"):
        return im.mode
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return "L"
    if im.mode == "P":
        return "RGBA" if transparent else "RGB"
    if im.mode in ("PA", "RGBa", "La"):
        return "RGBA"
    return "RGB"  # CMYK, YCbCr, LAB, 1, ...


def _normalized(im: Image.Image) -> Image.Image:
    target = _target_mode(im)
    if target == im.mode:
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        # Converting straight to L clips everything above 255; scale 16-bit samples down instead.
        return im.point(lambda v: v * (1 / 256)).convert("L")
    return im.convert(target)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA")


def _keeps_profile(src: _Source, mode: str, limits: Limits) -> bool:
    """A profile stays on the original when it is a real one, small, and describes pixels of this mode."""
    if src.profile is None or src.icc is None or len(src.icc) > limits.max_icc_bytes:
        return False
    space = src.profile.profile.xcolor_space.strip()
    return space == ("GRAY" if mode in ("L", "LA") else "RGB")


def _to_srgb(im: Image.Image, profile: ImageCms.ImageCmsProfile) -> Image.Image:
    try:
        converted = ImageCms.profileToProfile(im, profile, _SRGB, outputMode="RGBA" if _has_alpha(im) else "RGB")
    except (ImageCms.PyCMSError, ValueError, OSError):
        return im  # a profile that does not describe these pixels (an RGB profile on greyscale): ignore it
    return converted if converted is not None else im


def _colour_managed(im: Image.Image, src: _Source, limits: Limits, keep: bool) -> tuple[Image.Image, bytes | None]:
    """The pixels and the profile to store with them: a kept profile, or sRGB pixels and none."""
    if src.profile is None:
        return im, None
    if keep and _keeps_profile(src, im.mode, limits):
        return im, src.icc
    return _to_srgb(im, src.profile), None


def _cover(im: Image.Image, size: int) -> Image.Image:
    width, height = im.size
    short = min(width, height)
    side = min(size, short)
    left, top = (width - short) / 2, (height - short) / 2
    box = (left, top, left + short, top + short)
    return im.resize((side, side), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


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


def _original(pixels: Image.Image, src: _Source, limits: Limits) -> Encoded:
    managed, icc = _colour_managed(pixels, src, limits, keep=True)
    return _encode(managed, src.fmt, icc, limits.jpeg_quality)


def _thumbnail(small: Image.Image, src: _Source, limits: Limits) -> Encoded:
    """Colour-managed after the resize: converting 200x200 pixels costs nothing, the full image would not."""
    managed, _ = _colour_managed(small, src, limits, keep=False)
    return _encode(managed, "PNG" if _has_alpha(managed) else "JPEG", None, 85)


def make_original(data: bytes, limits: Limits) -> Encoded:
    """The stored original: same format family as uploaded, re-encoded from pixels, metadata stripped."""
    im, src, _ = _checked(data, limits)
    return _original(_decode(im, src), src, limits)


def make_thumbnail(data: bytes, limits: Limits) -> Encoded:
    """A square cover crop of at most `thumbnail_size`, never larger than the source's short side."""
    im, src, _ = _checked(data, limits)
    if src.fmt == "JPEG":
        # Fast path: libjpeg decodes at 1/2, 1/4 or 1/8 scale, still at least the thumbnail's size.
        im.draft(im.mode if im.mode in ("RGB", "L") else None, (limits.thumbnail_size, limits.thumbnail_size))
    return _thumbnail(_cover(_decode(im, src), limits.thumbnail_size), src, limits)


# ---------------------------------------------------------------------------------------------------------------
# One upload
# ---------------------------------------------------------------------------------------------------------------


class DecodeBudget:
    """The image memory of one process: an upload decodes once its estimated peak fits beside the uploads
    already decoding, so many small photos decode side by side while a few large ones take turns, and the
    total stays under `capacity` (a single upload is never more than `Limits.max_decoded_bytes`)."""

    def __init__(self, capacity: int):
        self.capacity, self.in_use = capacity, 0
        self._changed: asyncio.Condition | None = None  # made on first use, in the loop that uses it

    @asynccontextmanager
    async def hold(self, need: int) -> AsyncIterator[None]:
        need = min(need, self.capacity)
        changed = self._changed = self._changed or asyncio.Condition()
        async with changed:
            await changed.wait_for(lambda: self.in_use + need <= self.capacity)
            self.in_use += need
        try:
            yield
        finally:
            async with changed:
                self.in_use -= need
                changed.notify_all()


def _decode_for_both(data: bytes, limits: Limits) -> tuple[_Source, Image.Image, Image.Image]:
    """One decode serves both outputs. The thumbnail is cut before the original's encode starts, so the two
    encoder threads never share an image; the file image goes when this returns."""
    im, src, _ = _checked(data, limits)
    pixels = _decode(im, src)
    return src, pixels, _cover(pixels, limits.thumbnail_size)


async def _decode_and_encode(data: bytes, limits: Limits) -> tuple[Encoded, Encoded]:
    src, pixels, small = await asyncio.to_thread(_decode_for_both, data, limits)
    original, thumbnail = await asyncio.gather(
        asyncio.to_thread(_original, pixels, src, limits),
        asyncio.to_thread(_thumbnail, small, src, limits),
    )
    return original, thumbnail


async def process(
    data: bytes, limits: Limits, budget: DecodeBudget, cost: int | None = None
) -> tuple[Encoded, Encoded]:
    """Original and thumbnail from one decode, encoded in two threads (Pillow releases the GIL meanwhile).

    The header is checked before waiting for memory (`cost`: what `admit` already returned), so refused images
    never queue; the decode starts once its peak fits in the process's `budget`.
    """
    need = cost if cost is not None else await asyncio.to_thread(admit, data, limits)
    async with budget.hold(need):
        return await _decode_and_encode(data, limits)
