"""FAST TIER: the image functions over every case of the attack corpus, plus ICC and memory-budget rules, with
no PostgreSQL, RabbitMQ or Redis (the corpus comes from conftest.py's sys.path entry, the services are never
started)."""

from __future__ import annotations

import asyncio
import io
import time

import attack_corpus as corpus
import pytest
from PIL import Image, ImageCms

from lumiku_avatars import images
from lumiku_common.errors import AppError

LIMITS = images.Limits(corpus.PIXEL_CAP, 65_535)
MB = 1024 * 1024


async def process(data: bytes, limits: images.Limits) -> tuple[images.Encoded, images.Encoded]:
    return await images.process(data, limits, images.DecodeBudget(288 * MB))


MIME = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def _is_envelope_case(c: corpus.Case) -> bool:
    """Cases about the multipart envelope, which the image functions never see: the part's name, its size
    (413 is the form's), an empty part (the form turns it into "Image file is required"), and any case whose
    bytes an earlier case already sends (it varies only the file name or declared type). test_form.py has them."""
    first_with_same_bytes = next(other for other in corpus.cases() if other.data == c.data)
    return c.field != "image" or c.expected_status == 413 or not c.data or first_with_same_bytes is not c


IMAGE_CASES = [c for c in corpus.cases() if not _is_envelope_case(c)]
ENVELOPE_CASES = [c for c in corpus.cases() if _is_envelope_case(c)]


def test_the_envelope_rule_leaves_out_only_envelope_cases() -> None:
    assert {c.name for c in ENVELOPE_CASES} == {
        "oversize_10mb_plus_1",
        "empty_file",
        "wrong_field_name",
        "empty_filename",
        "path_traversal_filename",
        "nul_in_filename",
        "jpeg_declared_text_html",
        "svg_declared_svg",  # svg_renamed_png's bytes, declared honestly
    }


def _check(c: corpus.Case, original: images.Encoded, thumbnail: images.Encoded) -> None:
    corpus.check_stored(c, original.data, thumbnail.data, MIME[original.extension], MIME[thumbnail.extension])
    for encoded in (original, thumbnail):
        assert Image.open(io.BytesIO(encoded.data)).size == (encoded.width, encoded.height)


def _refused(c: corpus.Case, call) -> None:
    with pytest.raises(AppError) as raised:
        call()
    assert raised.value.status_code == 400
    if c.expected_error is not None:
        assert raised.value.message == c.expected_error


@pytest.mark.parametrize("c", IMAGE_CASES, ids=lambda c: c.name)
async def test_process_matches_the_corpus(c: corpus.Case) -> None:
    if c.expected_status == 201:
        _check(c, *await process(c.data, LIMITS))
        return
    with pytest.raises(AppError) as raised:
        await process(c.data, LIMITS)
    assert raised.value.status_code == 400
    if c.expected_error is not None:
        assert raised.value.message == c.expected_error


@pytest.mark.parametrize("c", IMAGE_CASES, ids=lambda c: c.name)
def test_make_original_and_make_thumbnail_match_the_corpus(c: corpus.Case) -> None:
    if c.expected_status == 201:
        assert images.sniff(c.data) in ("JPEG", "PNG", "WEBP")
        _check(c, images.make_original(c.data, LIMITS), images.make_thumbnail(c.data, LIMITS))
        return
    if c.expected_error == corpus.INVALID_TYPE:
        _refused(c, lambda: images.sniff(c.data))
    _refused(c, lambda: images.make_original(c.data, LIMITS))
    _refused(c, lambda: images.make_thumbnail(c.data, LIMITS))


# ---------------------------------------------------------------------------------------------------------------
# ICC profiles
# ---------------------------------------------------------------------------------------------------------------


def _profile(data: bytes) -> bytes | None:
    return Image.open(io.BytesIO(data)).info.get("icc_profile")


async def test_html_posing_as_a_profile_is_dropped_everywhere() -> None:
    original, thumbnail = await process(corpus.case("jpeg_html_as_icc_profile").data, LIMITS)
    for encoded in (original, thumbnail):
        assert _profile(encoded.data) is None
        assert not [needle for needle in corpus.FORBIDDEN_IN_STORED if needle in encoded.data]


async def test_an_8mb_profile_is_applied_to_the_pixels_not_stored() -> None:
    c = corpus.case("jpeg_8mb_icc_profile")
    original, thumbnail = await process(c.data, LIMITS)
    assert len(thumbnail.data) < 50 * 1024 and len(original.data) < 50 * 1024
    assert _profile(original.data) is None and _profile(thumbnail.data) is None
    want = corpus.icc_colour_in_srgb(_profile(c.data) or b"")
    pixel = Image.open(io.BytesIO(original.data)).convert("RGB").getpixel((32, 32))
    assert corpus.close(pixel, want, 8), (pixel, want)


async def test_a_small_valid_profile_stays_on_the_original_and_the_thumbnail_is_srgb() -> None:
    profile = corpus.wide_gamut_profile()
    original, thumbnail = await process(corpus.case("jpeg_wide_gamut_icc").data, LIMITS)
    assert _profile(original.data) == profile
    assert _profile(thumbnail.data) is None
    pixel = Image.open(io.BytesIO(thumbnail.data)).convert("RGB").getpixel((32, 32))
    assert corpus.close(pixel, corpus.icc_colour_in_srgb(profile), 8)


async def test_a_profile_over_the_limit_is_applied_even_when_valid() -> None:
    data = corpus.case("jpeg_wide_gamut_icc").data
    original, _ = await process(data, images.Limits(corpus.PIXEL_CAP, 65_535, max_icc_bytes=100))
    assert _profile(original.data) is None


async def test_a_valid_profile_for_other_pixels_is_not_kept() -> None:
    """A LAB or RGB profile on a greyscale PNG describes nothing in it: stored without one, still a 201."""
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    for icc in (lab, corpus.wide_gamut_profile()):
        out = io.BytesIO()
        Image.new("L", (32, 32), 128).save(out, "PNG", icc_profile=icc)
        original, thumbnail = await process(out.getvalue(), LIMITS)
        assert _profile(original.data) is None and _profile(thumbnail.data) is None
        assert Image.open(io.BytesIO(original.data)).getpixel((5, 5)) == 128


# ---------------------------------------------------------------------------------------------------------------
# Memory budget
# ---------------------------------------------------------------------------------------------------------------


def _png(mode: str, size: tuple[int, int], **params: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG", **params)
    return out.getvalue()


def test_the_decoded_bytes_budget_refuses_before_decoding_with_its_own_message() -> None:
    limits = images.Limits(corpus.PIXEL_CAP, 65_535, max_decoded_bytes=4 * 1024 * 1024)
    with pytest.raises(images.ImageTooLarge) as raised:
        images.make_original(_png("RGB", (1025, 1024)), limits)  # 4 bytes a pixel: just over 4 MiB
    assert raised.value.status_code == 400
    assert raised.value.message == "Image too large to process (max 4 MB decoded)"
    images.make_original(_png("RGB", (1024, 1024)), limits)  # exactly the budget


def test_the_budget_counts_conversions_the_pixel_cap_does_not() -> None:
    limits = images.Limits(corpus.PIXEL_CAP, 65_535, max_decoded_bytes=3_000_000)
    images.make_original(_png("L", (1000, 1000)), limits)  # 1 MB, no conversion
    with pytest.raises(images.ImageTooLarge):
        images.make_original(_png("P", (1000, 1000)), limits)  # 1 MB palette + 4 MB RGB while converting


def test_16bit_greyscale_decodes_straight_to_8_bits_with_the_full_range() -> None:
    source = Image.new("I;16", (256, 1))
    source.putdata([v * 257 for v in range(256)])
    out = io.BytesIO()
    source.save(out, "PNG")
    stored = Image.open(io.BytesIO(images.make_original(out.getvalue(), LIMITS).data))
    assert stored.mode == "L" and stored.getextrema() == (0, 255)
    # 1 byte a pixel: a 16-bit greyscale PNG at the pixel cap costs what an 8-bit one does.
    limits = images.Limits(corpus.PIXEL_CAP, 65_535, max_decoded_bytes=1_100_000)
    images.make_original(_png("I;16", (1000, 1000)), limits)


def _counting_decodes(monkeypatch) -> dict[str, int]:
    """Replaces the decode with one that counts how many run at once (each long enough to overlap)."""
    count = {"running": 0, "most": 0}
    decode = images._decode_for_both

    def counting(data: bytes, limits: images.Limits):
        count["running"] += 1
        count["most"] = max(count["most"], count["running"])
        time.sleep(0.05)
        try:
            return decode(data, limits)
        finally:
            count["running"] -= 1

    monkeypatch.setattr(images, "_decode_for_both", counting)
    return count


@pytest.mark.parametrize(("fits", "expected"), [(1, 1), (2, 2), (3, 3)])
async def test_decodes_run_side_by_side_only_while_their_memory_fits(monkeypatch, fits: int, expected: int) -> None:
    count = _counting_decodes(monkeypatch)
    data = corpus.case("valid_png").data
    budget = images.DecodeBudget(fits * images.admit(data, LIMITS))
    await asyncio.gather(*(images.process(data, LIMITS, budget) for _ in range(6)))
    assert count["most"] == expected and budget.in_use == 0


async def test_an_upload_larger_than_the_whole_budget_decodes_alone_instead_of_waiting_forever(monkeypatch) -> None:
    count = _counting_decodes(monkeypatch)
    data = corpus.case("valid_png").data
    budget = images.DecodeBudget(images.admit(data, LIMITS) // 2)
    await asyncio.wait_for(asyncio.gather(*(images.process(data, LIMITS, budget) for _ in range(3))), 10)
    assert count["most"] == 1


async def test_refused_images_never_take_memory_from_the_budget() -> None:
    budget = images.DecodeBudget(1)
    with pytest.raises(AppError):
        await images.process(corpus.case("png_bomb_64mp").data, LIMITS, budget)
    assert budget.in_use == 0
