"""Each sample of the attack corpus is what it claims to be, and the corpus's own checks can fail."""

from __future__ import annotations

import importlib.util
import io
import struct
import sys
import zlib
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError


def load_corpus() -> ModuleType:
    """Import ``attack_corpus.py`` next to this file (pytest runs with ``--import-mode=importlib``, so tests cannot
    import their neighbours by name). Copy this into the API test, or import it from here."""
    name = "avatars_attack_corpus"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("attack_corpus.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


ac = load_corpus()
CASES = ac.cases()
BY_NAME = {c.name: c for c in CASES}
ALLOWED = {"JPEG", "PNG", "WEBP"}


def open_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def decode(data: bytes) -> Image.Image:
    image = open_image(data)
    image.load()
    return image


def fails_to_decode(data: bytes) -> bool:
    try:
        decode(data)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError):
        return True
    return False


def png_chunks(data: bytes) -> list[tuple[bytes, bytes, int]]:
    """(type, payload, stored crc) of every chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        chunks.append((kind, payload, crc))
        pos += 12 + length
    return chunks


def ihdr(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) read from the header without decoding."""
    kind, payload, _ = png_chunks(data)[0]
    assert kind == b"IHDR"
    return struct.unpack(">IIBB", payload[:10])


# ---------------------------------------------------------------------------------------------------------------
# The corpus as a whole
# ---------------------------------------------------------------------------------------------------------------

REQUIRED = {
    "html_renamed_png",
    "svg_renamed_png",
    "js_declared_jpeg",
    "polyglot_jpeg_html",
    "jpeg_html_in_com_segment",
    "jpeg_html_in_app_segment",
    "png_bomb_400mp",
    "strip_50000x1_png",
    "truncated_jpeg",
    "jpeg_header_only",
    "png_bad_crc",
    "cmyk_jpeg",
    "png_16bit_grey",
    "png_alpha",
    "animated_webp",
    "exif_orientation_6",
    "gps_jpeg",
    "tiny_10x10_png",
    "gif",
    "bmp_renamed_jpg",
    "tiff",
    "ico_renamed_png",
    "heic_like_ftyp",
    "exactly_10mb_valid_jpeg",
    "exactly_10mb_undecodable",
    "oversize_10mb_plus_1",
    "empty_file",
    "empty_filename",
    "path_traversal_filename",
    "wrong_field_name",
    "jpeg_declared_text_html",
    "nul_in_filename",
}


def test_corpus_is_complete_and_consistent() -> None:
    assert len(BY_NAME) == len(CASES), "case names must be unique (they are pytest ids)"
    assert BY_NAME.keys() >= REQUIRED, REQUIRED - BY_NAME.keys()
    for c in CASES:
        assert c.name.isidentifier(), c.name
        assert isinstance(c.data, bytes)
        assert c.expected_status in (201, 400, 413), c
        assert c.check is None or (c.check in ac.CHECKS and c.expected_status == 201), c
        assert c.expected_error is None or c.expected_status >= 400, c
        assert c.field == "image" or c.expected_error == ac.IMAGE_REQUIRED, c
        assert c.expected_status == 413 or len(c.data) <= ac.MAX_UPLOAD_BYTES, c
        assert c.expected_status != 413 or (len(c.data) > ac.MAX_UPLOAD_BYTES and c.expected_error == ac.TOO_LARGE)
    assert {c.check for c in CASES} - {None} == ac.CHECKS, "every check is exercised by some case"


def test_generation_is_deterministic() -> None:
    again = ac._build.__wrapped__()
    assert again == tuple(CASES)
    with pytest.raises(KeyError):
        ac.case("no_such_case")
    assert ac.case("gif") is BY_NAME["gif"]


def test_case_repr_does_not_dump_data() -> None:
    assert len(repr(BY_NAME["oversize_10mb_plus_1"])) < 100


@pytest.mark.parametrize("c", [c for c in CASES if c.expected_status == 201], ids=lambda c: c.name)
def test_every_accepted_sample_decodes_as_an_allowed_format_under_the_cap(c) -> None:
    image = decode(c.data)
    assert image.format in ALLOWED
    assert image.width * image.height <= ac.PIXEL_CAP


@pytest.mark.parametrize("c", [c for c in CASES if c.expected_error == ac.INVALID_TYPE], ids=lambda c: c.name)
def test_every_invalid_type_sample_is_not_jpeg_png_or_webp(c) -> None:
    try:
        image = open_image(c.data)
    except UnidentifiedImageError:
        return
    assert image.format not in ALLOWED


# ---------------------------------------------------------------------------------------------------------------
# Disguised non-images
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["html_renamed_png", "svg_renamed_png", "svg_declared_svg"])
def test_markup_carries_a_script(name: str) -> None:
    c = BY_NAME[name]
    assert b"<script>" in c.data
    assert (b"<svg" in c.data) == name.startswith("svg")
    assert (b"<html" in c.data) == name.startswith("html")
    assert fails_to_decode(c.data)


def test_html_and_svg_are_declared_as_png() -> None:
    for name in ("html_renamed_png", "svg_renamed_png"):
        assert (BY_NAME[name].filename, BY_NAME[name].content_type) == ("avatar.png", "image/png")


def test_javascript_declared_as_jpeg() -> None:
    c = BY_NAME["js_declared_jpeg"]
    assert c.content_type == "image/jpeg" and c.filename.endswith(".jpg")
    assert c.data.startswith(b"alert(") and fails_to_decode(c.data)


def test_jpeg_magic_then_html_fools_only_a_magic_number_check() -> None:
    c = BY_NAME["jpeg_magic_then_html"]
    assert c.data.startswith(b"\xff\xd8\xff") and b"<script" in c.data
    assert fails_to_decode(c.data)


# ---------------------------------------------------------------------------------------------------------------
# Real JPEGs carrying HTML
# ---------------------------------------------------------------------------------------------------------------


def test_polyglot_is_a_complete_jpeg_followed_by_html() -> None:
    c = BY_NAME["polyglot_jpeg_html"]
    assert c.data.endswith(ac.XSS_PAYLOAD) and b"<script" in c.data
    jpeg = c.data[: -len(ac.XSS_PAYLOAD)]
    assert jpeg.startswith(b"\xff\xd8\xff") and jpeg.endswith(b"\xff\xd9"), "the HTML starts right after EOI"
    assert decode(jpeg).format == "JPEG"
    assert decode(c.data).size == decode(jpeg).size


@pytest.mark.parametrize(("name", "marker"), [("jpeg_html_in_com_segment", 0xFE), ("jpeg_html_in_app_segment", 0xEF)])
def test_html_inside_a_jpeg_segment(name: str, marker: int) -> None:
    c = BY_NAME[name]
    segments = ac.jpeg_segments(c.data)
    carrying = [(m, off, size) for m, off, size in segments if m == marker]
    assert len(carrying) == 1
    _, offset, size = carrying[0]
    assert c.data[offset + 4 : offset + size] == ac.SEGMENT_PAYLOAD
    assert b"<script" in ac.SEGMENT_PAYLOAD
    assert segments[-1][0] == 0xDA, "the segment sits in the header, before the scan"
    assert decode(c.data).format == "JPEG"


# ---------------------------------------------------------------------------------------------------------------
# Pixel cap and odd dimensions
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ac.BOMB_SIZES))
def test_bomb_declares_more_than_the_cap_in_a_small_complete_png(name: str) -> None:
    c = BY_NAME[name]
    width, height, depth, colour = ihdr(c.data)
    assert colour == 0, "greyscale"
    assert (width, height) == ac.BOMB_SIZES[name]
    assert width * height > ac.PIXEL_CAP
    assert len(c.data) < 64 * 1024
    chunks = png_chunks(c.data)
    assert [k for k, _, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert all(zlib.crc32(k + p) == crc for k, p, crc in chunks), "a valid PNG: only its size is hostile"
    # The compressed stream is complete: it inflates to every row (streamed, to keep memory small).
    inflater, total = zlib.decompressobj(), 0
    out = inflater.decompress(chunks[1][1], 1 << 20)
    while out:
        total += len(out)
        out = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
    assert inflater.eof
    assert total == height * ((width * depth + 7) // 8 + 1)


PILLOW_DEFAULT_MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3


def test_64mp_bomb_passes_pillows_own_bomb_check_so_only_the_service_cap_stops_it(monkeypatch) -> None:
    # The service may lower Image.MAX_IMAGE_PIXELS process-wide; this is about Pillow's default.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOW_DEFAULT_MAX_IMAGE_PIXELS)
    assert ac.BOMB_SIZES["png_bomb_64mp"][0] * ac.BOMB_SIZES["png_bomb_64mp"][1] < Image.MAX_IMAGE_PIXELS
    assert open_image(BY_NAME["png_bomb_64mp"].data).size == (8000, 8000)
    with pytest.raises(Image.DecompressionBombError):
        open_image(BY_NAME["png_bomb_400mp"].data)


@pytest.mark.parametrize(("name", "size"), [("strip_50000x1_png", (50_000, 1)), ("strip_16000x1_png", (16_000, 1))])
def test_strips_are_n_by_1_and_under_the_cap(name: str, size: tuple[int, int]) -> None:
    image = decode(BY_NAME[name].data)
    assert image.size == size
    assert {ac.STRIP_SIZE, ac.SHORT_STRIP_SIZE} == {(50_000, 1), (16_000, 1)}


def test_tiny_is_10_by_10() -> None:
    assert decode(BY_NAME["tiny_10x10_png"].data).size == ac.TINY_SIZE == (10, 10)


# ---------------------------------------------------------------------------------------------------------------
# Broken files
# ---------------------------------------------------------------------------------------------------------------


def test_truncated_jpeg_opens_but_fails_to_load() -> None:
    data = BY_NAME["truncated_jpeg"].data
    image = open_image(data)
    assert image.format == "JPEG" and image.size == (128, 128)
    assert not data.endswith(b"\xff\xd9")
    with pytest.raises(OSError, match="truncated"):
        image.load()


def test_jpeg_header_only_has_a_frame_header_but_no_scan() -> None:
    data = BY_NAME["jpeg_header_only"].data
    markers = [m for m, _, _ in ac.jpeg_segments(data + b"\xff\xda\x00\x02")]
    assert 0xC0 in markers and markers[-1] == 0xDA and markers.count(0xDA) == 1
    assert fails_to_decode(data)


def test_png_bad_crc_is_valid_except_for_the_ihdr_checksum() -> None:
    data = BY_NAME["png_bad_crc"].data
    chunks = png_chunks(data)
    assert [k for k, p, crc in chunks if zlib.crc32(k + p) != crc] == [b"IHDR"]
    assert fails_to_decode(data)
    kind, payload, _ = chunks[0]
    repaired = data[:29] + struct.pack(">I", zlib.crc32(kind + payload)) + data[33:]
    assert decode(repaired).format == "PNG"


def test_empty_file() -> None:
    assert BY_NAME["empty_file"].data == b""


# ---------------------------------------------------------------------------------------------------------------
# Unusual valid encodings
# ---------------------------------------------------------------------------------------------------------------


def test_cmyk_jpeg_decodes_as_cmyk_with_known_colours() -> None:
    image = decode(BY_NAME["cmyk_jpeg"].data)
    assert image.format == "JPEG" and image.mode == "CMYK"
    rgb = image.convert("RGB")
    assert ac.close(rgb.getpixel((4, 16)), ac.CMYK_LEFT_RGB, 8)
    assert ac.close(rgb.getpixel((60, 16)), ac.CMYK_RIGHT_RGB, 8)


def test_16bit_pngs() -> None:
    grey, rgb = BY_NAME["png_16bit_grey"].data, BY_NAME["png_16bit_rgb"].data
    assert ihdr(grey)[2:] == (16, 0)
    assert decode(grey).mode in ("I;16", "I")
    low, high = decode(grey).getextrema()
    assert low == 0
    assert isinstance(high, int) and high > 255, "values use the 16-bit range"
    assert ihdr(rgb)[2:] == (16, 2)
    assert decode(rgb).size == (64, 64)


def test_png_alpha_has_transparent_and_opaque_pixels() -> None:
    image = decode(BY_NAME["png_alpha"].data)
    assert image.mode == "RGBA"
    histogram = image.getchannel("A").histogram()
    assert histogram[0] > 0 and histogram[255] > 0


def test_animated_webp_has_several_distinct_frames() -> None:
    image = decode(BY_NAME["animated_webp"].data)
    frames: int = getattr(image, "n_frames", 1)
    assert image.format == "WEBP" and frames == len(ac.FRAME_COLOURS) > 1
    colours = []
    for frame in range(frames):
        image.seek(frame)
        colours.append(image.convert("RGB").getpixel((10, 10)))
    assert colours == list(ac.FRAME_COLOURS)


# ---------------------------------------------------------------------------------------------------------------
# Orientation and metadata
# ---------------------------------------------------------------------------------------------------------------


def test_exif_rotated_photo_has_orientation_6_and_a_pattern_that_reveals_the_rotation() -> None:
    raw = decode(BY_NAME["exif_orientation_6"].data)
    assert raw.getexif()[ac.ORIENTATION_TAG] == 6
    assert raw.size == ac.RAW_SIZE
    assert all(map(ac.close, ac.quadrant_colours(raw), ac.RAW_QUADRANTS))

    upright = ImageOps.exif_transpose(raw)
    assert upright.size == ac.ROTATED_SIZE
    assert all(map(ac.close, ac.quadrant_colours(upright), ac.ROTATED_QUADRANTS))
    assert ac.oriented_size(BY_NAME["exif_orientation_6"].data) == ac.ROTATED_SIZE

    def centre_square(image: Image.Image) -> Image.Image:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        return image.crop((left, top, left + side, top + side))

    assert ac.rotated_crop_ok(ac.quadrant_colours(centre_square(upright)))
    assert ac.rotated_crop_ok(ac.quadrant_colours(upright.crop((0, 0, 200, 200))))
    assert ac.rotated_crop_ok(ac.quadrant_colours(upright.crop((0, 200, 200, 400))))
    wrong = [Image.Transpose.ROTATE_180, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM]
    for other in [raw, raw.transpose(Image.Transpose.ROTATE_90), *(upright.transpose(t) for t in wrong)]:
        assert not ac.rotated_crop_ok(ac.quadrant_colours(centre_square(other)))


def test_gps_photo_carries_gps_exif_xmp_and_a_comment() -> None:
    data = BY_NAME["gps_jpeg"].data
    image = decode(data)
    gps = image.getexif().get_ifd(ac.GPS_IFD)
    assert gps[1] == "S" and gps[3] == "E"
    assert [float(v) for v in gps[2]] == [6.0, 12.0, 31.5]
    assert ac.METADATA_MARKER in data
    leftovers = " ".join(ac.metadata_leftovers(data))
    for expected in ("GPS IFD", "EXIF", "xmp", "comment", ac.METADATA_MARKER.decode()):
        assert expected in leftovers


def test_metadata_leftovers_is_empty_for_a_clean_file() -> None:
    assert ac.metadata_leftovers(BY_NAME["valid_jpeg"].data) == []
    assert ac.metadata_leftovers(BY_NAME["valid_png"].data) == []
    assert ac.metadata_leftovers(BY_NAME["valid_webp"].data) == []
    assert ac.metadata_leftovers(BY_NAME["polyglot_jpeg_html"].data) != []
    assert ac.metadata_leftovers(BY_NAME["jpeg_html_in_app_segment"].data) != []


# ---------------------------------------------------------------------------------------------------------------
# ICC profiles
# ---------------------------------------------------------------------------------------------------------------


def test_html_as_icc_profile_is_carried_whole_and_is_no_profile() -> None:
    data = BY_NAME["jpeg_html_as_icc_profile"].data
    assert decode(data).info["icc_profile"] == ac.SEGMENT_PAYLOAD
    with pytest.raises(OSError):
        ImageCms.ImageCmsProfile(io.BytesIO(ac.SEGMENT_PAYLOAD))


def test_8mb_icc_profile_parses_and_makes_a_tiny_image_huge() -> None:
    image = decode(BY_NAME["jpeg_8mb_icc_profile"].data)
    icc = image.info["icc_profile"]
    assert len(icc) == ac.OVERSIZED_ICC_BYTES > ac.ICC_KEEP_LIMIT and image.size == ac.ICC_SIZE
    assert ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space == "RGB "


def test_wide_gamut_profile_is_small_valid_and_not_srgb() -> None:
    icc = decode(BY_NAME["jpeg_wide_gamut_icc"].data).info["icc_profile"]
    assert icc == ac.wide_gamut_profile() and len(icc) <= ac.ICC_KEEP_LIMIT
    assert ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space == "RGB "
    assert not ac.close(ac.icc_colour_in_srgb(icc), ac.ICC_COLOUR, 12), "P3 colorants must visibly move the colour"


# ---------------------------------------------------------------------------------------------------------------
# Formats that are not accepted
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"), [("gif", "GIF"), ("bmp_renamed_jpg", "BMP"), ("tiff", "TIFF"), ("ico_renamed_png", "ICO")]
)
def test_real_images_of_other_formats(name: str, fmt: str) -> None:
    assert decode(BY_NAME[name].data).format == fmt


@pytest.mark.parametrize(("name", "brand"), [("heic_like_ftyp", b"heic"), ("avif_like_ftyp", b"avif")])
def test_iso_bmff_lookalikes(name: str, brand: bytes) -> None:
    data = BY_NAME[name].data
    (size,) = struct.unpack(">I", data[:4])
    assert data[4:8] == b"ftyp" and data[8:12] == brand and size <= len(data)


# ---------------------------------------------------------------------------------------------------------------
# Size limit
# ---------------------------------------------------------------------------------------------------------------


def test_oversize_is_one_byte_over_and_otherwise_a_valid_jpeg() -> None:
    data = BY_NAME["oversize_10mb_plus_1"].data
    assert len(data) == 10 * 1024 * 1024 + 1
    assert data.startswith(b"\xff\xd8\xff") and data.endswith(b"\xff\xd9")
    assert decode(data).format == "JPEG", "size is its only fault"


def test_exactly_10mb_valid_jpeg() -> None:
    data = BY_NAME["exactly_10mb_valid_jpeg"].data
    assert len(data) == 10 * 1024 * 1024
    assert decode(data).size == decode(BY_NAME["valid_jpeg"].data).size
    assert all(m == 0xFE for m, _, _ in ac.jpeg_segments(data)[1:-10]), "padded with COM segments, inside the JPEG"


def test_exactly_10mb_undecodable() -> None:
    data = BY_NAME["exactly_10mb_undecodable"].data
    assert len(data) == 10 * 1024 * 1024
    assert data.startswith(BY_NAME["jpeg_header_only"].data)
    assert fails_to_decode(data)


# ---------------------------------------------------------------------------------------------------------------
# Client-controlled names and types
# ---------------------------------------------------------------------------------------------------------------


def test_client_claims() -> None:
    assert BY_NAME["empty_filename"].filename == ""
    assert BY_NAME["path_traversal_filename"].filename == "../../etc/passwd.png"
    assert "\x00" in BY_NAME["nul_in_filename"].filename
    assert BY_NAME["jpeg_declared_text_html"].content_type == "text/html"
    assert decode(BY_NAME["jpeg_declared_text_html"].data).format == "JPEG"
    wrong = BY_NAME["wrong_field_name"]
    assert wrong.field == "file" and decode(wrong.data).format == "JPEG"
    for name in ("empty_filename", "path_traversal_filename", "nul_in_filename"):
        assert decode(BY_NAME[name].data).format == "PNG"


# ---------------------------------------------------------------------------------------------------------------
# multipart_body
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nul_in_filename", "empty_filename", "wrong_field_name", "path_traversal_filename"])
def test_multipart_body_layout(name: str) -> None:
    c = BY_NAME[name]
    body, content_type = ac.multipart_body(c, {"name": "Ava", "gender": "female"})
    boundary = content_type.split("boundary=")[1].encode()
    parts = body.split(b"--" + boundary)
    assert parts[0] == b"" and parts[-1] == b"--\r\n" and len(parts) == 5
    assert parts[1] == b'\r\nContent-Disposition: form-data; name="name"\r\n\r\nAva\r\n'
    headers, payload = parts[3].split(b"\r\n\r\n", 1)
    assert headers == (
        b'\r\nContent-Disposition: form-data; name="'
        + c.field.encode()
        + b'"; filename="'
        + c.filename.encode()
        + b'"\r\nContent-Type: '
        + c.content_type.encode()
    )
    assert payload == c.data + b"\r\n"


def test_multipart_body_refuses_data_containing_the_boundary() -> None:
    with pytest.raises(ValueError, match="boundary"):
        ac.multipart_body(ac.Case("x", b"data--" + ac.BOUNDARY.encode(), "a.png", "image/png", 201))
    with pytest.raises(ValueError, match="boundary"):
        ac.multipart_body(ac.Case("x", b"data--xyz", "a.png", "image/png", 201), boundary="xyz")
    assert ac.multipart_body(ac.Case("x", b"data-xyz", "a.png", "image/png", 201), boundary="xyz")


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.name)
async def test_multipart_body_reaches_starlette_as_built(c) -> None:
    pytest.importorskip("python_multipart")
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartParser

    body, content_type = ac.multipart_body(c, {"name": "Ava"})

    async def stream():
        yield body

    form = await MultiPartParser(Headers({"content-type": content_type}), stream()).parse()
    assert form["name"] == "Ava"
    part = form[c.field]
    assert isinstance(part, UploadFile)
    assert part.filename == c.filename
    assert part.content_type == c.content_type
    assert await part.read() == c.data


# ---------------------------------------------------------------------------------------------------------------
# check_stored: passes for a correct pipeline, fails for each defect it guards against
# ---------------------------------------------------------------------------------------------------------------


def _cover(image: Image.Image, upscale: bool) -> Image.Image:
    side = ac.THUMBNAIL_SIDE
    scale = max(side / image.width, side / image.height)
    if not upscale:
        scale = min(scale, 1.0)
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    w, h = min(resized.width, side), min(resized.height, side)
    left, top = (resized.width - w) // 2, (resized.height - h) // 2
    return resized.crop((left, top, left + w, top + h))


def _save(image: Image.Image, keep_info: bool, icc: bytes | None = None) -> bytes:
    if not keep_info:
        image.info = {}
    buf = io.BytesIO()
    extra = {"icc_profile": icc} if icc else {}
    if image.mode == "CMYK" or image.mode == "RGB":
        image.save(buf, "JPEG", quality=90, **extra)
    else:
        image.save(buf, "PNG", **extra)
    return buf.getvalue()


def _profile(icc: bytes | None) -> ImageCms.ImageCmsProfile | None:
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc)) if icc else None
    except OSError:
        return None


def _in_srgb(image: Image.Image, profile: ImageCms.ImageCmsProfile | None) -> Image.Image:
    if profile is None:
        return image
    converted = ImageCms.profileToProfile(image, profile, ImageCms.createProfile("sRGB"), outputMode=image.mode)
    assert converted is not None
    return converted


def pipeline(
    data: bytes,
    *,
    transpose: bool = True,
    convert: bool = True,
    upscale: bool = False,
    frame: int = 0,
    keep_info: bool = False,
    thumb_from_raw: bool = False,
    stretch: bool = False,
    icc_unchecked: bool = False,
) -> tuple[bytes, bytes]:
    """A reference of the endpoint's processing, with switches that each reintroduce one defect."""
    image = open_image(data)
    icc = image.info.get("icc_profile")
    image.seek(frame)
    image.load()
    raw = image
    if transpose:
        image = ImageOps.exif_transpose(image)
    if convert:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        raw = raw.convert("RGBA" if "A" in raw.getbands() else "RGB")
    source = raw if thumb_from_raw else image
    thumbnail = source.resize((ac.THUMBNAIL_SIDE,) * 2) if stretch else _cover(source, upscale)
    if icc_unchecked:  # the profile copied onto both files, whatever it is
        return _save(image, keep_info, icc), _save(thumbnail, keep_info, icc)
    profile = _profile(icc)
    keep = profile is not None and icc is not None and len(icc) <= ac.ICC_KEEP_LIMIT
    original = _save(image, keep_info, icc) if keep else _save(_in_srgb(image, profile), keep_info)
    return original, _save(_in_srgb(thumbnail, profile), keep_info)


ACCEPTED = [c for c in CASES if c.expected_status == 201]


@pytest.mark.parametrize("c", ACCEPTED, ids=lambda c: c.name)
def test_check_stored_accepts_a_correct_pipeline(c) -> None:
    original, thumbnail = pipeline(c.data)
    ac.check_stored(c, original, thumbnail)
    mime = "image/png" if original.startswith(b"\x89PNG") else "image/jpeg"
    ac.check_stored(c, original, thumbnail, mime, "image/jpeg" if thumbnail[:2] == b"\xff\xd8" else "image/png")


DEFECTS = [
    ("polyglot_jpeg_html", "stored as uploaded", None),
    ("jpeg_html_in_com_segment", "stored as uploaded", None),
    ("jpeg_html_in_app_segment", "stored as uploaded", None),
    ("gps_jpeg", "stored as uploaded", None),
    ("gps_jpeg", "Pillow info kept", {"keep_info": True}),
    ("jpeg_html_in_com_segment", "Pillow info kept", {"keep_info": True}),
    ("exif_orientation_6", "stored as uploaded", None),
    ("exif_orientation_6", "orientation ignored", {"transpose": False}),
    ("exif_orientation_6", "thumbnail from the unrotated image", {"thumb_from_raw": True}),
    ("cmyk_jpeg", "kept CMYK", {"convert": False}),
    ("animated_webp", "stored as uploaded", None),
    ("animated_webp", "last frame", {"frame": 2}),
    ("tiny_10x10_png", "thumbnail upscaled", {"upscale": True}),
    ("strip_50000x1_png", "thumbnail stretched to 200x200", {"stretch": True}),
    ("strip_16000x1_png", "thumbnail stretched to 200x200", {"stretch": True}),
    ("valid_webp", "thumbnail upscaled", {"upscale": True}),
    ("jpeg_html_as_icc_profile", "stored as uploaded", None),
    ("jpeg_html_as_icc_profile", "profile copied unchecked", {"icc_unchecked": True}),
    ("jpeg_8mb_icc_profile", "profile copied unchecked", {"icc_unchecked": True}),
    ("jpeg_wide_gamut_icc", "profile copied unchecked", {"icc_unchecked": True}),
]


@pytest.mark.parametrize(("name", "defect", "switches"), DEFECTS, ids=[f"{n}-{d}" for n, d, _ in DEFECTS])
def test_check_stored_rejects_each_defect(name: str, defect: str, switches: dict | None) -> None:
    c = BY_NAME[name]
    if switches is None:  # the upload itself kept as the original (and as the thumbnail source)
        original, thumbnail = c.data, pipeline(c.data)[1]
    else:
        original, thumbnail = pipeline(c.data, **switches)
    with pytest.raises(AssertionError):
        ac.check_stored(c, original, thumbnail)


def test_check_stored_rejects_a_served_type_that_does_not_match_the_bytes() -> None:
    c = BY_NAME["valid_png"]
    original, thumbnail = pipeline(c.data)
    with pytest.raises(AssertionError, match="thumbnail"):
        ac.check_stored(c, original, thumbnail, thumbnail_content_type="image/png")
    with pytest.raises(AssertionError):
        ac.check_stored(BY_NAME["html_renamed_png"], original, thumbnail)
