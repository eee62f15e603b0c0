"""Attack corpus for ``POST /api/apps/avatar-creator/projects/{projectId}/avatars``.

Every sample is generated here, deterministically, from Pillow and plain bytes: no file is checked in and nothing
touches the network. ``cases()`` builds the whole corpus in well under a second (cached after the first call).

Contract the samples encode (see ``/work/shared/spec/original-implementation.md`` items 5-7 and 10):

- size limit ``MAX_UPLOAD_BYTES`` = 10 MiB, **inclusive**: exactly 10 MiB is not "too large" (it is 201 if it decodes,
  400 otherwise); 10 MiB + 1 byte is 413 ``TOO_LARGE``;
- no ``image`` part → 400 ``IMAGE_REQUIRED``;
- the format comes from the bytes only; the declared ``Content-Type`` and the file name are ignored. JPEG, PNG and
  WebP are accepted, anything else is 400 ``INVALID_TYPE``;
- the pixel cap (40 MP by default) is checked from the header before decoding → 400;
- truncated or corrupt images → 400 (message not fixed: ``expected_error`` is ``None``);
- every accepted image is decoded and **re-encoded**: nothing of the uploaded byte stream survives except pixels
  (so appended HTML, HTML in COM/APP segments, EXIF, GPS, XMP and comments are gone), EXIF orientation is applied,
  CMYK is converted, only the first frame of an animation is kept;
- the thumbnail is a 200x200 cover crop and is never upscaled (each side ≤ min(200, source side));
- client file names are never used for storage (path traversal, NUL bytes and empty names are all 201);
- an ICC profile stays on the original only if it parses and is at most 64 KB (otherwise it is applied to the
  pixels, or dropped when it is no profile); thumbnails are sRGB and never carry one.

Decisions the endpoint must match:

- ``polyglot_jpeg_html`` (a complete JPEG with ``<html><script>`` after EOI) and the JPEGs with HTML in a COM or APP15
  segment decode as real JPEGs, so they are **201**; the test must assert the stored bytes contain no ``b"<script"``
  (``check_stored`` does, for every 201 case, via ``FORBIDDEN_IN_STORED``). Beware: Pillow's JPEG encoder copies
  ``image.info["comment"]`` into the new file, so a naive ``open → save`` keeps the COM payload; clear ``info``.
- ``strip_50000x1_png`` (50 000 pixels, far under the cap) is **201**: no aspect or per-side rule rejects it, and the
  thumbnail must still be at most 200x1 (never upscaled, never stretched). ``strip_16000x1_png`` covers the same
  edge within WebP's 16 383 side limit, should the service adopt one (then only the 50 000 case flips to 400).
- ``exactly_10mb_valid_jpeg`` (a valid JPEG grown with COM segments to exactly 10 MiB) is **201**;
  ``exactly_10mb_undecodable`` (JPEG headers then zeros, exactly 10 MiB) is **400** (corrupt), not 413.
- ``oversize_10mb_plus_1`` is a fully decodable JPEG of 10 MiB + 1 byte: its size is its only fault → 413.
- ``empty_file`` is 400 with any message ("Image file is required" or "Invalid file type" are both reasonable).
- ``wrong_field_name`` sends a valid JPEG as part ``file``: 400 "Image file is required", whatever the parser does
  with unknown parts.

How an API test uses it::

    import attack_corpus as corpus  # conftest.py puts this directory on sys.path, for unit/ too

    @pytest.mark.parametrize("case", corpus.cases(), ids=lambda c: c.name)
    async def test_upload(api, case):
        body, content_type = corpus.multipart_body(case, {"name": "Ava"})
        r = await api.post(url, content=body, headers={"content-type": content_type, **auth})
        assert r.status_code == case.expected_status
        if case.expected_error is not None:
            assert r.json()["error"] == case.expected_error
        if case.expected_status == 201:
            corpus.check_stored(case, original_bytes, thumbnail_bytes)

(``test_attack_corpus.py`` does exactly this; ``unit/test_images.py`` feeds the same cases to the image functions
directly. ``test_attack_corpus_generator.py`` loads the module by path instead, so it runs without conftest.py.)

Use ``multipart_body`` rather than ``httpx``'s ``files=``: httpx drops ``filename=""`` (the part then becomes a plain
text field) and percent-encodes NUL bytes, so the empty-name and NUL-name cases would not reach the server as built.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from PIL import Image, ImageCms, ImageStat

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
PIXEL_CAP = 40_000_000
THUMBNAIL_SIDE = 200

TOO_LARGE = "File too large (max 10MB)"
IMAGE_REQUIRED = "Image file is required"
INVALID_TYPE = "Invalid file type"

# Values the 201 checks look for.
METADATA_MARKER = b"LumikuCorpusSecretMetadata"
XSS_PAYLOAD = b"<html><script>alert(1)</script></html>"
SEGMENT_PAYLOAD = b"<html><body><script>alert(document.cookie)</script></body></html>"
# No stored original or thumbnail may contain any of these byte strings.
FORBIDDEN_IN_STORED: tuple[bytes, ...] = (b"<script", b"<html", b"alert(", METADATA_MARKER)

GPS_IFD = 0x8825
ORIENTATION_TAG = 0x0112

Rgb = tuple[int, int, int]
RED: Rgb = (230, 30, 30)
GREEN: Rgb = (30, 200, 30)
BLUE: Rgb = (30, 30, 230)
YELLOW: Rgb = (240, 220, 30)

# The "rotated" photo: stored 400x200 (landscape) with Orientation = 6 ("rotate 90° clockwise to display").
# Quadrants are (top-left, top-right, bottom-left, bottom-right).
RAW_SIZE = (400, 200)
RAW_QUADRANTS: tuple[Rgb, Rgb, Rgb, Rgb] = (RED, GREEN, BLUE, YELLOW)
# After the orientation is applied: 200x400 portrait, and the quadrants move clockwise. A 200x200 centre crop of the
# rotated image (rows 100..300) shows the same quadrant layout, so the thumbnail can be checked the same way.
ROTATED_SIZE = (200, 400)
ROTATED_QUADRANTS: tuple[Rgb, Rgb, Rgb, Rgb] = (BLUE, RED, YELLOW, GREEN)

# The CMYK JPEG: left half pure cyan, right half pure yellow (CMYK). After a correct conversion to RGB:
CMYK_LEFT_RGB: Rgb = (0, 255, 255)
CMYK_RIGHT_RGB: Rgb = (255, 255, 0)

# The animated WebP: three frames of these colours; only the first may be kept.
FRAME_COLOURS: tuple[Rgb, ...] = ((220, 30, 30), (30, 200, 30), (30, 30, 220))
FIRST_FRAME_RGB: Rgb = FRAME_COLOURS[0]

STRIP_SIZE = (50_000, 1)
# The same edge case within WebP's 16 383-pixel side limit, in case the service adopts a per-side limit too.
SHORT_STRIP_SIZE = (16_000, 1)
TINY_SIZE = (10, 10)
BOMB_SIZES = {"png_bomb_64mp": (8000, 8000), "png_bomb_400mp": (20_000, 20_000)}

# ICC profiles (issue 8.7). A profile is kept on the original only if it parses and is at most ICC_KEEP_LIMIT
# bytes; thumbnails never carry one. The samples are solid ICC_COLOUR, which a wide-gamut profile makes a
# visibly different sRGB colour (so a thumbnail that skipped the conversion is caught).
ICC_KEEP_LIMIT = 64 * 1024
ICC_COLOUR: Rgb = (200, 40, 40)
ICC_SIZE = (64, 64)
OVERSIZED_ICC_BYTES = 8 * 1024 * 1024
# The largest a 64x64 sample's stored file may be: an 8 MB profile that survived would show.
ICC_SAMPLE_MAX_STORED = 50 * 1024
# Display P3's colorants (D50-adapted, as in Apple's profile), written into lcms's own sRGB profile.
P3_COLORANTS = {
    b"rXYZ": (0.515102, 0.241182, -0.001050),
    b"gXYZ": (0.291965, 0.692236, 0.041882),
    b"bXYZ": (0.157153, 0.066582, 0.784378),
}

BOUNDARY = "lumiku-attack-corpus-6b1f0c9e2d"

CHECKS = frozenset(
    {"rotated", "no_metadata", "cmyk_converted", "first_frame", "not_upscaled", "strip", "icc_kept", "icc_dropped"}
)


@dataclass(frozen=True)
class Case:
    """One upload the API test sends.

    ``check`` names the extra verification a 201 case needs (``check_stored`` performs all of them); every 201 case
    additionally gets the common checks (re-encoded, no metadata, no ``FORBIDDEN_IN_STORED`` bytes, thumbnail rules).
    """

    name: str
    data: bytes
    filename: str
    content_type: str
    expected_status: int
    field: str = "image"
    expected_error: str | None = None
    check: str | None = None

    def __repr__(self) -> str:  # keep pytest output readable (data may be 10 MiB)
        return f"Case({self.name!r}, {len(self.data)} bytes, expected {self.expected_status})"


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _quadrant_image(size: tuple[int, int], colours: tuple[Rgb, Rgb, Rgb, Rgb]) -> Image.Image:
    w, h = size
    image = Image.new("RGB", size)
    tl, tr, bl, br = colours
    image.paste(tl, (0, 0, w // 2, h // 2))
    image.paste(tr, (w // 2, 0, w, h // 2))
    image.paste(bl, (0, h // 2, w // 2, h))
    image.paste(br, (w // 2, h // 2, w, h))
    return image


def _noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    w, h = size
    return Image.frombytes("RGB", size, random.Random(seed).randbytes(w * h * 3))


def _photo_jpeg() -> bytes:
    """A small ordinary JPEG (the base of several samples)."""
    return _encode(_quadrant_image((64, 48), RAW_QUADRANTS), "JPEG", quality=90)


def _photo_png() -> bytes:
    return _encode(_quadrant_image((64, 48), RAW_QUADRANTS), "PNG")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, bit_depth: int, colour_type: int, rows: Iterable[bytes]) -> bytes:
    """A PNG written by hand (filter type 0 on every row), for headers Pillow would not produce cheaply."""
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(b"\x00" + row) for row in rows) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _bomb_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit PNG of ``width``x``height`` black pixels: tiny on disk, huge once decoded."""
    row = b"\x00" * ((width + 7) // 8)
    return _png(width, height, 1, 0, (row for _ in range(height)))


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, offset of the 0xFF, total length) of each segment from SOI up to and including SOS."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    segments = [(0xD8, 0, 2)]
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"no marker at {pos}")
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segments.append((marker, pos, 2 + length))
        if marker == 0xDA:  # SOS: entropy-coded data follows
            break
        pos += 2 + length
    return segments


def _insert_after_soi(jpeg: bytes, segments: Iterable[bytes]) -> bytes:
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def _segment(marker: int, payload: bytes) -> bytes:
    if len(payload) > 65533:
        raise ValueError("segment payload too long")
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _pad_with_comments(jpeg: bytes, total: int) -> bytes:
    """``jpeg`` grown to exactly ``total`` bytes with COM segments right after SOI: still a fully valid JPEG."""
    missing = total - len(jpeg)
    if missing < 4:
        raise ValueError("cannot pad by fewer than 4 bytes")
    segments = []
    while missing:
        size = min(missing, 65537)
        if 0 < missing - size < 4:  # never leave a remainder too small for a segment
            size = missing - 4
        segments.append(_segment(0xFE, b"\x00" * (size - 4)))
        missing -= size
    padded = _insert_after_soi(jpeg, segments)
    assert len(padded) == total
    return padded


def _header_only(jpeg: bytes) -> bytes:
    """Everything before the SOS marker: SOI, JFIF, tables and the frame header, but no image data."""
    marker, offset, _ = jpeg_segments(jpeg)[-1]
    assert marker == 0xDA
    return jpeg[:offset]


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    return _encode(_quadrant_image(RAW_SIZE, RAW_QUADRANTS), "JPEG", quality=95, exif=exif.tobytes())


def _gps_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "LumikuCorpusCam"  # Make
    exif[0x010E] = METADATA_MARKER.decode()  # ImageDescription
    exif[GPS_IFD] = {
        1: "S",  # GPSLatitudeRef
        2: (6.0, 12.0, 31.5),  # GPSLatitude (Jakarta)
        3: "E",  # GPSLongitudeRef
        4: (106.0, 50.0, 43.2),  # GPSLongitude
    }
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + METADATA_MARKER + b"</x:xmpmeta>"
    image = _quadrant_image((96, 64), RAW_QUADRANTS)
    return _encode(image, "JPEG", quality=90, exif=exif.tobytes(), xmp=xmp, comment=METADATA_MARKER)


def _cmyk_jpeg() -> bytes:
    image = Image.new("CMYK", (64, 32))
    image.paste((255, 0, 0, 0), (0, 0, 32, 32))
    image.paste((0, 0, 255, 0), (32, 0, 64, 32))
    return _encode(image, "JPEG", quality=95)


def _png_16bit_grey() -> bytes:
    image = Image.new("I;16", (64, 64))
    image.putdata([i * 16 for i in range(64 * 64)])  # gradient over the whole 16-bit range
    return _encode(image, "PNG")


def _png_16bit_rgb() -> bytes:
    rows = (b"".join(struct.pack(">HHH", x * 1024, y * 1024, 0x8000) for x in range(64)) for y in range(64))
    return _png(64, 64, 16, 2, rows)


def _png_alpha() -> bytes:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste((230, 30, 30, 255), (16, 16, 48, 48))
    image.paste((30, 30, 230, 128), (0, 0, 16, 64))
    return _encode(image, "PNG")


def _animated_webp() -> bytes:
    frames = [Image.new("RGB", (64, 64), colour) for colour in FRAME_COLOURS]
    return _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)


def _png_bad_crc() -> bytes:
    """A valid PNG whose IHDR checksum is flipped: every decoder (Pillow, libpng) refuses the header."""
    png = bytearray(_photo_png())
    crc_offset = 8 + 8 + 13  # signature, IHDR length + type, IHDR payload
    png[crc_offset] ^= 0xFF
    return bytes(png)


def _heic_like() -> bytes:
    ftyp = b"ftyp" + b"heic" + struct.pack(">I", 0) + b"mif1heic"
    meta = b"meta" + b"\x00" * 4 + b"\x00" * 24
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + struct.pack(">I", 4 + len(meta)) + meta


def _avif_like() -> bytes:
    ftyp = b"ftyp" + b"avif" + struct.pack(">I", 0) + b"avifmif1miaf"
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + b"\x00" * 64


def _icc_tags(profile: bytes) -> dict[bytes, tuple[int, int]]:
    """Tag signature → (offset, size) from an ICC profile's tag table."""
    (count,) = struct.unpack(">I", profile[128:132])
    entries = (profile[132 + 12 * i : 144 + 12 * i] for i in range(count))
    return {e[:4]: struct.unpack(">II", e[4:]) for e in entries}


def wide_gamut_profile() -> bytes:
    """A small, valid Display-P3-like RGB profile (588 bytes): lcms's sRGB with P3's colorants."""
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    tags = _icc_tags(bytes(profile))
    for tag, xyz in P3_COLORANTS.items():
        offset, _ = tags[tag]
        profile[offset + 8 : offset + 20] = b"".join(struct.pack(">i", round(v * 65536)) for v in xyz)
    profile[24:36] = bytes(12)  # lcms stamps the creation time: zero it to keep the corpus deterministic
    profile[84:100] = bytes(16)  # the profile ID (an MD5 of the old contents) would no longer match
    return bytes(profile)


def _oversized_profile() -> bytes:
    """A profile that parses (header size updated) padded to OVERSIZED_ICC_BYTES."""
    profile = bytearray(wide_gamut_profile())
    profile += bytes(OVERSIZED_ICC_BYTES - len(profile))
    profile[:4] = struct.pack(">I", len(profile))
    return bytes(profile)


def _icc_jpeg(icc: bytes) -> bytes:
    return _encode(Image.new("RGB", ICC_SIZE, ICC_COLOUR), "JPEG", quality=95, icc_profile=icc)


def icc_colour_in_srgb(profile: bytes) -> Rgb:
    """What ICC_COLOUR looks like in sRGB when it is described by ``profile``."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    pixel = Image.new("RGB", (1, 1), ICC_COLOUR)
    converted = ImageCms.profileToProfile(pixel, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    assert converted is not None
    r, g, b = converted.getpixel((0, 0))  # type: ignore[misc]
    return (r, g, b)


SVG_WITH_SCRIPT = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
    b'<rect width="100" height="100" fill="red"/>'
    b"<script>alert(document.domain)</script></svg>\n"
)
HTML_PAGE = (
    b"<!DOCTYPE html><html><body><script>fetch('/api/me').then(r=>r.text()).then(alert)</script></body></html>\n"
)
JAVASCRIPT = b"alert(document.cookie);\n"


# ---------------------------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------------------------


@cache
def _build() -> tuple[Case, ...]:
    jpeg = _photo_jpeg()
    png = _photo_png()
    noise_jpeg = _encode(_noise_image((128, 128), seed=7), "JPEG", quality=90)
    strip = _encode(Image.new("RGB", STRIP_SIZE, (30, 120, 200)), "PNG")
    short_strip = _encode(Image.new("RGB", SHORT_STRIP_SIZE, (30, 120, 200)), "PNG")
    tiny = _encode(_quadrant_image(TINY_SIZE, RAW_QUADRANTS), "PNG")
    small = _quadrant_image((16, 16), RAW_QUADRANTS)
    oversize = _pad_with_comments(jpeg, MAX_UPLOAD_BYTES + 1)
    exact_valid = _pad_with_comments(jpeg, MAX_UPLOAD_BYTES)
    header = _header_only(jpeg)
    exact_undecodable = header + b"\x00" * (MAX_UPLOAD_BYTES - len(header))
    ok, bad = 201, 400

    return (
        # Positive controls.
        Case("valid_jpeg", jpeg, "avatar.jpg", "image/jpeg", ok),
        Case("valid_png", png, "avatar.png", "image/png", ok),
        Case(
            "valid_webp",
            _encode(_quadrant_image((64, 48), RAW_QUADRANTS), "WEBP", quality=90),
            "a.webp",
            "image/webp",
            ok,
        ),
        # Content that is not an image at all, declared as one (item 5: stored XSS).
        Case("html_renamed_png", HTML_PAGE, "avatar.png", "image/png", bad, expected_error=INVALID_TYPE),
        Case("svg_renamed_png", SVG_WITH_SCRIPT, "avatar.png", "image/png", bad, expected_error=INVALID_TYPE),
        Case("svg_declared_svg", SVG_WITH_SCRIPT, "avatar.svg", "image/svg+xml", bad, expected_error=INVALID_TYPE),
        Case("js_declared_jpeg", JAVASCRIPT, "avatar.jpg", "image/jpeg", bad, expected_error=INVALID_TYPE),
        # JPEG magic number followed by HTML: a magic-bytes-only check passes it, decoding must not.
        Case("jpeg_magic_then_html", b"\xff\xd8\xff\xe0" + HTML_PAGE, "avatar.jpg", "image/jpeg", bad),
        # Real JPEGs carrying HTML: they decode, so they are accepted, and re-encoding must drop the HTML.
        Case("polyglot_jpeg_html", jpeg + XSS_PAYLOAD, "avatar.jpg", "image/jpeg", ok, check="no_metadata"),
        Case(
            "jpeg_html_in_com_segment",
            _insert_after_soi(jpeg, [_segment(0xFE, SEGMENT_PAYLOAD)]),
            "avatar.jpg",
            "image/jpeg",
            ok,
            check="no_metadata",
        ),
        Case(
            "jpeg_html_in_app_segment",
            _insert_after_soi(jpeg, [_segment(0xEF, SEGMENT_PAYLOAD)]),
            "avatar.jpg",
            "image/jpeg",
            ok,
            check="no_metadata",
        ),
        # Pixel cap: valid PNGs whose header declares more pixels than the cap. 64 MP is below Pillow's own
        # decompression-bomb threshold (89 MP), so only the service's cap rejects it.
        *(Case(name, _bomb_png(*size), "avatar.png", "image/png", bad) for name, size in BOMB_SIZES.items()),
        # 50 000 px in total, far below the cap: accepted, and the thumbnail must still be ≤ 200x200 (here ≤ 200x1).
        Case("strip_50000x1_png", strip, "avatar.png", "image/png", ok, check="strip"),
        Case("strip_16000x1_png", short_strip, "avatar.png", "image/png", ok, check="strip"),
        # Broken files.
        Case("truncated_jpeg", noise_jpeg[: len(noise_jpeg) * 3 // 5], "avatar.jpg", "image/jpeg", bad),
        Case("jpeg_header_only", header, "avatar.jpg", "image/jpeg", bad),
        Case("png_bad_crc", _png_bad_crc(), "avatar.png", "image/png", bad),
        Case("empty_file", b"", "avatar.png", "image/png", bad),
        # Unusual but valid encodings of accepted formats.
        Case("cmyk_jpeg", _cmyk_jpeg(), "avatar.jpg", "image/jpeg", ok, check="cmyk_converted"),
        Case("png_16bit_grey", _png_16bit_grey(), "avatar.png", "image/png", ok),
        Case("png_16bit_rgb", _png_16bit_rgb(), "avatar.png", "image/png", ok),
        Case("png_alpha", _png_alpha(), "avatar.png", "image/png", ok),
        Case("animated_webp", _animated_webp(), "avatar.webp", "image/webp", ok, check="first_frame"),
        # Metadata (item 7) and orientation.
        Case("exif_orientation_6", _exif_rotated_jpeg(), "avatar.jpg", "image/jpeg", ok, check="rotated"),
        Case("gps_jpeg", _gps_jpeg(), "avatar.jpg", "image/jpeg", ok, check="no_metadata"),
        # ICC profiles (issue 8.7): attacker bytes posing as a profile are dropped, an 8 MB one is applied to
        # the pixels rather than stored, a small valid wide-gamut one stays on the original.
        Case(
            "jpeg_html_as_icc_profile", _icc_jpeg(SEGMENT_PAYLOAD), "avatar.jpg", "image/jpeg", ok, check="icc_dropped"
        ),
        Case("jpeg_8mb_icc_profile", _icc_jpeg(_oversized_profile()), "a.jpg", "image/jpeg", ok, check="icc_dropped"),
        Case("jpeg_wide_gamut_icc", _icc_jpeg(wide_gamut_profile()), "avatar.jpg", "image/jpeg", ok, check="icc_kept"),
        # Item 10: small images are never upscaled into thumbnails.
        Case("tiny_10x10_png", tiny, "avatar.png", "image/png", ok, check="not_upscaled"),
        # Real images of formats that are not accepted; some are declared honestly, some disguised.
        Case("gif", _encode(small, "GIF"), "avatar.gif", "image/gif", bad, expected_error=INVALID_TYPE),
        Case("bmp_renamed_jpg", _encode(small, "BMP"), "avatar.jpg", "image/jpeg", bad, expected_error=INVALID_TYPE),
        Case("tiff", _encode(small, "TIFF"), "avatar.tiff", "image/tiff", bad, expected_error=INVALID_TYPE),
        Case("ico_renamed_png", _encode(small, "ICO"), "avatar.png", "image/png", bad, expected_error=INVALID_TYPE),
        Case("heic_like_ftyp", _heic_like(), "avatar.heic", "image/heic", bad, expected_error=INVALID_TYPE),
        Case("avif_like_ftyp", _avif_like(), "avatar.avif", "image/avif", bad, expected_error=INVALID_TYPE),
        # Size limit (inclusive). Both 10 MiB samples and the 413 one are built by padding, not by encoding.
        Case("exactly_10mb_valid_jpeg", exact_valid, "avatar.jpg", "image/jpeg", ok),
        Case("exactly_10mb_undecodable", exact_undecodable, "avatar.jpg", "image/jpeg", bad),
        Case("oversize_10mb_plus_1", oversize, "avatar.jpg", "image/jpeg", 413, expected_error=TOO_LARGE),
        # Client-controlled names and types are ignored.
        Case("empty_filename", png, "", "image/png", ok),
        Case("path_traversal_filename", png, "../../etc/passwd.png", "image/png", ok),
        Case("nul_in_filename", png, "avatar\x00.php\x00.png", "image/png", ok),
        Case("jpeg_declared_text_html", jpeg, "avatar.html", "text/html", ok),
        Case("wrong_field_name", jpeg, "avatar.jpg", "image/jpeg", bad, field="file", expected_error=IMAGE_REQUIRED),
    )


def cases() -> list[Case]:
    """The corpus, in a stable order. Built once per process."""
    return list(_build())


def case(name: str) -> Case:
    """One case by name (``KeyError`` if there is none)."""
    for c in _build():
        if c.name == name:
            return c
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------------------------
# Helpers for the API test
# ---------------------------------------------------------------------------------------------------------------


def _quote(value: str) -> bytes:
    # Only '"' would end the quoted string early; everything else (NUL, '/', '..') is sent raw on purpose.
    return value.replace('"', "%22").encode("utf-8")


def multipart_body(c: Case, fields: Mapping[str, str] | None = None, boundary: str = BOUNDARY) -> tuple[bytes, str]:
    """A byte-exact ``multipart/form-data`` body: text ``fields`` first, then the file part as ``c`` describes it.

    Returns ``(body, content_type_header)``. The file part always carries ``filename="..."`` (even when empty) and
    the name is sent unescaped apart from ``"``, unlike httpx's ``files=``.
    """
    marker = b"--" + boundary.encode()
    if marker in c.data:
        raise ValueError("boundary occurs in the data")
    parts = [
        marker + b'\r\nContent-Disposition: form-data; name="' + _quote(key) + b'"\r\n\r\n' + value.encode() + b"\r\n"
        for key, value in (fields if fields is not None else {"name": "Corpus avatar"}).items()
    ]
    parts.append(
        marker
        + b'\r\nContent-Disposition: form-data; name="'
        + _quote(c.field)
        + b'"; filename="'
        + _quote(c.filename)
        + b'"\r\nContent-Type: '
        + c.content_type.encode()
        + b"\r\n\r\n"
        + c.data
        + b"\r\n"
    )
    parts.append(marker + b"--\r\n")
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def close(a: Iterable[int], b: Iterable[int], tolerance: int = 48) -> bool:
    """Colours equal within ``tolerance`` per channel (JPEG round trips shift solid colours a little)."""
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def _mean(image: Image.Image, box: tuple[int, int, int, int]) -> Rgb:
    r, g, b = ImageStat.Stat(image.crop(box).convert("RGB")).mean
    return (round(r), round(g), round(b))


def quadrant_colours(image: Image.Image) -> tuple[Rgb, Rgb, Rgb, Rgb]:
    """Mean colour at the centre of each quadrant: (top-left, top-right, bottom-left, bottom-right)."""
    w, h = image.size
    qw, qh = max(w // 8, 1), max(h // 8, 1)
    centres = ((w // 4, h // 4), (3 * w // 4, h // 4), (w // 4, 3 * h // 4), (3 * w // 4, 3 * h // 4))
    return tuple(_mean(image, (x - qw, y - qh, x + qw, y + qh)) for x, y in centres)  # type: ignore[return-value]


def rotated_crop_ok(quadrants: tuple[Rgb, Rgb, Rgb, Rgb]) -> bool:
    """Whether four quadrant colours can come from a crop (at any vertical position) of the correctly rotated photo.

    Each column of the rotated photo is two colours stacked (left: blue over yellow, right: red over green); a square
    crop may show one or both of them, never the other column's colours and never in the reverse order. Every other
    orientation (unrotated, counter-clockwise, mirrored, upside down) fails this.
    """
    tl, tr, bl, br = quadrants
    for top, bottom, column in ((tl, bl, ROTATED_QUADRANTS[0::2]), (tr, br, ROTATED_QUADRANTS[1::2])):
        where = [
            next((i for i, colour in enumerate(column) if close(sample, colour)), None) for sample in (top, bottom)
        ]
        if None in where or where[0] > where[1]:  # type: ignore[operator]
            return False
    return True


def metadata_leftovers(data: bytes) -> list[str]:
    """Everything in a stored file that should not be there (empty list = clean)."""
    problems = [f"contains {needle!r}" for needle in FORBIDDEN_IN_STORED if needle in data]
    with Image.open(io.BytesIO(data)) as image:
        exif = image.getexif()
        if len(exif):
            problems.append(f"EXIF tags {sorted(exif)}")
        if exif.get_ifd(GPS_IFD):
            problems.append("GPS IFD")
        for key in ("exif", "xmp", "XML:com.adobe.xmp", "comment"):
            if key in image.info:
                problems.append(f"info[{key!r}]")
        for marker, payload in getattr(image, "applist", []):
            if marker == "COM" or (marker == "APP1" and payload[:4] in (b"Exif", b"http")) or marker == "APP15":
                problems.append(f"{marker} segment")
        text = getattr(image, "text", None) if image.format == "PNG" else None
        if text:
            problems.append(f"PNG text chunks {sorted(text)}")
    return problems


def oriented_size(data: bytes) -> tuple[int, int]:
    """Display size of an upload: its pixel size with the EXIF orientation applied."""
    with Image.open(io.BytesIO(data)) as image:
        w, h = image.size
        return (h, w) if image.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8) else (w, h)


_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


def _decode(data: bytes, what: str) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format in _MIME, f"{what}: stored as {image.format}, not JPEG/PNG/WebP"
    image.load()
    return image


def check_stored(
    c: Case,
    original: bytes,
    thumbnail: bytes,
    original_content_type: str | None = None,
    thumbnail_content_type: str | None = None,
) -> None:
    """Assert what a 201 must have produced for ``c``: the stored original and thumbnail bytes (and, if given, the
    content types they are served with, which must match their bytes: item 10)."""
    assert c.expected_status == 201, f"{c.name} is not a 201 case"
    orig = _decode(original, "original")
    thumb = _decode(thumbnail, "thumbnail")
    if original_content_type is not None:
        assert original_content_type.split(";")[0].strip() == _MIME[orig.format or ""], (
            "original: type does not match bytes"
        )
    if thumbnail_content_type is not None:
        assert thumbnail_content_type.split(";")[0].strip() == _MIME[thumb.format or ""], (
            "thumbnail: type/bytes mismatch"
        )
    assert "icc_profile" not in thumb.info, "thumbnail: carries an ICC profile (thumbnails are sRGB, untagged)"
    for what, data in (("original", original), ("thumbnail", thumbnail)):
        leftovers = metadata_leftovers(data)
        assert not leftovers, f"{what}: {leftovers}"
        assert not getattr(Image.open(io.BytesIO(data)), "is_animated", False), f"{what}: animated"

    src_w, src_h = oriented_size(c.data)
    assert orig.width <= src_w and orig.height <= src_h, f"original {orig.size} larger than the upload {src_w}x{src_h}"
    tw, th = thumb.size
    assert 1 <= tw <= min(THUMBNAIL_SIDE, src_w) and 1 <= th <= min(THUMBNAIL_SIDE, src_h), (
        f"thumbnail {thumb.size} upscaled or larger than {THUMBNAIL_SIDE}² (source {src_w}x{src_h})"
    )
    if src_w >= THUMBNAIL_SIDE and src_h >= THUMBNAIL_SIDE:
        assert thumb.size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE), f"thumbnail {thumb.size} is not a 200x200 cover crop"

    if c.check == "rotated":
        assert orig.height > orig.width, f"original {orig.size}: orientation not applied"
        got = quadrant_colours(orig)
        assert all(map(close, got, ROTATED_QUADRANTS)), f"original: quadrants {got}, want {ROTATED_QUADRANTS}"
        got = quadrant_colours(thumb)
        assert rotated_crop_ok(got), f"thumbnail: quadrants {got} are not a crop of {ROTATED_QUADRANTS}"
    elif c.check == "cmyk_converted":
        for what, image in (("original", orig), ("thumbnail", thumb)):
            w, h = image.size
            left, right = _mean(image, (0, 0, max(w // 4, 1), h)), _mean(image, (w - max(w // 4, 1), 0, w, h))
            assert image.mode != "CMYK", f"{what}: still CMYK"
            assert close(left, CMYK_LEFT_RGB) and close(right, CMYK_RIGHT_RGB), f"{what}: colours {left}, {right}"
    elif c.check == "first_frame":
        for what, image in (("original", orig), ("thumbnail", thumb)):
            mean = _mean(image, (0, 0, image.width, image.height))
            assert close(mean, FIRST_FRAME_RGB), f"{what}: colour {mean}, want the first frame's {FIRST_FRAME_RGB}"
    elif c.check == "strip":
        assert th == 1 and tw <= THUMBNAIL_SIDE, f"strip thumbnail {thumb.size}"
    elif c.check == "not_upscaled":
        assert tw <= TINY_SIZE[0] and th <= TINY_SIZE[1], f"tiny thumbnail {thumb.size}"
    elif c.check in ("icc_kept", "icc_dropped"):
        _check_icc(c, orig, thumb, original, thumbnail)
    # "no_metadata" is covered by the common checks above (metadata_leftovers on both files).


def _check_icc(c: Case, orig: Image.Image, thumb: Image.Image, original: bytes, thumbnail: bytes) -> None:
    uploaded = Image.open(io.BytesIO(c.data)).info.get("icc_profile", b"")
    for what, data in (("original", original), ("thumbnail", thumbnail)):
        assert len(data) < ICC_SAMPLE_MAX_STORED, f"{what}: {len(data)} bytes for a {ICC_SIZE} image"
    if c.check == "icc_kept":
        assert orig.info.get("icc_profile") == uploaded, "original: the small valid profile was not kept"
        assert close(_mean(orig, (0, 0, *orig.size)), ICC_COLOUR, 12), "original: pixels changed under the profile"
        want = icc_colour_in_srgb(uploaded)
        got = _mean(thumb, (0, 0, *thumb.size))
        assert close(got, want, 12), f"thumbnail: {got}, want {want} (the profile applied, in sRGB)"
    else:
        assert "icc_profile" not in orig.info, "original: kept a profile it should have dropped or applied"
