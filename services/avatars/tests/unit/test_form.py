"""FAST TIER: the streaming multipart parser and the preview body reader, fed through a real starlette Request
whose receive() hands out chunks and counts how often it was called. No services, no database."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import attack_corpus as corpus
import pytest
from starlette.requests import Request

from lumiku_avatars.form import (
    FORM_ALLOWANCE,
    IMAGE_FIELD,
    MAX_FIELD_BYTES,
    MAX_PARTS,
    ImageRequired,
    MalformedForm,
    UploadForm,
    read_preview_body,
    read_upload_form,
)
from lumiku_common.errors import AppError

LIMIT = corpus.MAX_UPLOAD_BYTES
BOUNDARY = "unit-boundary-1234"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
PNG = corpus.case("valid_png").data


class Body:
    """An ASGI receive() over `chunks` (any iterable, possibly endless) that counts its calls."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks: Iterator[bytes] = iter(chunks)
        self._next: bytes | None = next(self._chunks, None)
        self.calls = 0

    async def receive(self) -> dict[str, object]:
        self.calls += 1
        chunk, self._next = self._next or b"", next(self._chunks, None)
        return {"type": "http.request", "body": chunk, "more_body": self._next is not None}


def request(body: Body, content_type: str | None = MULTIPART, length: int | None = None) -> Request:
    headers = [(b"content-type", content_type.encode())] if content_type else []
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"", "headers": headers}
    return Request(scope, body.receive)  # type: ignore[arg-type]


def part(name: bytes, value: bytes, filename: bytes | None = None, disposition: bytes | None = None) -> bytes:
    header = disposition or b'form-data; name="' + name + b'"' + (
        b'; filename="' + filename + b'"' if filename else b""
    )
    return b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: " + header + b"\r\n\r\n" + value + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY.encode() + b"--\r\n"


def chunked(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def parse(data: bytes, **kwargs: object) -> UploadForm:
    return await read_upload_form(request(Body(chunked(data)), **kwargs), LIMIT)  # type: ignore[arg-type]


async def refused(data: bytes, status: int, message: str, **kwargs: object) -> None:
    with pytest.raises(AppError) as raised:
        await parse(data, **kwargs)
    assert (raised.value.status_code, raised.value.message) == (status, message)


async def test_fields_and_the_image_arrive_whole_across_chunk_boundaries() -> None:
    data = form(part(b"name", "Ava ✓".encode()), part(b"notes", b""), part(b"image", PNG, b"a.png"))
    for size in (1, 7, 1000, len(data)):
        parsed = await read_upload_form(request(Body(chunked(data, size))), LIMIT)
        assert parsed == UploadForm(fields={"name": "Ava ✓", "notes": ""}, image=PNG)


async def test_a_part_named_image_without_a_filename_is_still_the_image() -> None:
    assert (await parse(form(part(b"image", PNG)))).image == PNG


async def test_too_many_parts() -> None:
    data = form(*(part(f"f{i}".encode(), b"x") for i in range(MAX_PARTS + 1)))
    await refused(data, 400, f"Too many form fields (max {MAX_PARTS})")
    assert len((await parse(form(*(part(f"f{i}".encode(), b"x") for i in range(MAX_PARTS))))).fields) == MAX_PARTS


@pytest.mark.parametrize(
    "disposition", [b'attachment; name="name"', b"form-data", b'form-data; name=""', b'form-data; filename="a"']
)
async def test_a_part_without_a_form_data_name_is_malformed(disposition: bytes) -> None:
    await refused(form(part(b"", b"x", disposition=disposition)), 400, "Malformed multipart/form-data body")


async def test_a_part_without_content_disposition_is_malformed() -> None:
    data = b"--" + BOUNDARY.encode() + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n--" + BOUNDARY.encode() + b"--\r\n"
    await refused(data, 400, "Malformed multipart/form-data body")


async def test_a_text_field_over_16_kb() -> None:
    assert (await parse(form(part(b"name", b"a" * MAX_FIELD_BYTES)))).fields["name"] == "a" * MAX_FIELD_BYTES
    await refused(form(part(b"name", b"a" * (MAX_FIELD_BYTES + 1))), 400, "Form field 'name' is too long")


async def test_two_image_parts() -> None:
    data = form(part(b"image", PNG, b"a.png"), part(b"image", PNG, b"b.png"))
    await refused(data, 400, "Only one image file is allowed")


async def test_the_same_field_twice() -> None:
    await refused(form(part(b"name", b"a"), part(b"name", b"b")), 400, "Form field 'name' was sent twice")


async def test_a_field_that_is_not_utf8() -> None:
    await refused(form(part(b"name", b"caf\xe9")), 400, "Form field 'name' is not valid UTF-8")


async def test_a_body_over_the_limit_without_content_length_is_cut_off_mid_stream() -> None:
    chunk = 64 * 1024
    # A well-formed start, then a text field that would never end: the body limit stops it, not the field's.
    start = b"--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="notes"\r\n\r\n'
    endless = Body(itertools.chain([start], iter(lambda: b"x" * chunk, None)))
    with pytest.raises(AppError) as raised:
        await read_upload_form(request(endless), LIMIT)
    assert (raised.value.status_code, raised.value.message) == (400, "Form field 'notes' is too long")
    endless_file = Body(itertools.chain([start.replace(b'"notes"', b'"image"')], iter(lambda: b"x" * chunk, None)))
    with pytest.raises(AppError) as raised:
        await read_upload_form(request(endless_file), LIMIT)
    assert (raised.value.status_code, raised.value.message) == (413, corpus.TOO_LARGE)
    assert endless_file.calls == 1 + LIMIT // chunk + 1, "read one chunk past the limit, then stopped"


async def test_a_stream_over_the_body_limit_is_cut_off_even_if_no_part_is() -> None:
    """Endless 1 MB files under another name, each under the file limit: the running byte count stops them."""
    other = part(b"other", b"x" * (1 << 20), b"o.bin")
    body = Body(itertools.repeat(other))
    with pytest.raises(AppError) as raised:
        await read_upload_form(request(body), LIMIT)
    assert (raised.value.status_code, raised.value.message) == (413, corpus.TOO_LARGE)
    assert body.calls == (LIMIT + FORM_ALLOWANCE) // len(other) + 1


async def test_an_image_part_over_the_limit_is_refused_while_parsing() -> None:
    data = form(part(b"image", b"\xff" * (LIMIT + 1), b"a.jpg"))
    body = Body(chunked(data, 64 * 1024))
    with pytest.raises(AppError) as raised:
        await read_upload_form(request(body), LIMIT)
    assert (raised.value.status_code, raised.value.message) == (413, corpus.TOO_LARGE)
    assert body.calls == LIMIT // (64 * 1024) + 1


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    body = Body([form(part(b"image", PNG, b"a.png"))])
    with pytest.raises(AppError) as raised:
        await read_upload_form(request(body, length=LIMIT + FORM_ALLOWANCE + 1), LIMIT)
    assert (raised.value.status_code, raised.value.message) == (413, corpus.TOO_LARGE)
    assert body.calls == 0


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_body_that_cannot_carry_the_file(content_type: str | None) -> None:
    body = Body([form(part(b"image", PNG, b"a.png"))])
    with pytest.raises(ImageRequired) as raised:
        await read_upload_form(request(body, content_type=content_type), LIMIT)
    assert (raised.value.status_code, raised.value.message) == (400, corpus.IMAGE_REQUIRED)
    assert body.calls == 0


async def test_a_file_under_another_name_is_ignored() -> None:
    parsed = await parse(form(part(b"name", b"Ava"), part(b"file", PNG, b"a.png")))
    assert parsed == UploadForm(fields={"name": "Ava"}, image=None)


@pytest.mark.parametrize("cut", [10, 60, -60, -3])
async def test_a_truncated_body_is_malformed(cut: int) -> None:
    data = form(part(b"name", b"Ava"), part(b"image", PNG, b"a.png"))
    await refused(data[:cut], 400, "Malformed multipart/form-data body")
    with pytest.raises(MalformedForm):
        await parse(b"")


# The corpus's envelope cases (left out of unit/test_images.py): what the parser hands the upload.
ENVELOPE = {
    "oversize_10mb_plus_1": None,
    "empty_file": b"",
    "wrong_field_name": None,
    "empty_filename": PNG,
    "path_traversal_filename": PNG,
    "nul_in_filename": PNG,
    "jpeg_declared_text_html": corpus.case("valid_jpeg").data,
    "svg_declared_svg": corpus.SVG_WITH_SCRIPT,
}


@pytest.mark.parametrize("name", sorted(ENVELOPE))
async def test_corpus_envelopes(name: str) -> None:
    c = corpus.case(name)
    body, content_type = corpus.multipart_body(c, {"name": "Corpus avatar"})
    if c.expected_status == 413:
        with pytest.raises(AppError) as raised:
            await read_upload_form(request(Body(chunked(body, 64 * 1024)), content_type), LIMIT)
        assert (raised.value.status_code, raised.value.message) == (413, c.expected_error)
        return
    parsed = await read_upload_form(request(Body(chunked(body, 64 * 1024)), content_type), LIMIT)
    assert parsed.fields == {"name": "Corpus avatar"} and parsed.image == ENVELOPE[name]
    assert (parsed.image is None) == (c.field != IMAGE_FIELD)


# ---------------------------------------------------------------------------------------------------------------
# The save-preview body (JSON with base64)
# ---------------------------------------------------------------------------------------------------------------

PREVIEW_LIMIT = -(-LIMIT * 4 // 3) + FORM_ALLOWANCE


async def test_preview_body_is_read_whole() -> None:
    data = b'{"imageBase64": "' + b"A" * 100_000 + b'"}'
    assert await read_preview_body(request(Body(chunked(data)), "application/json"), LIMIT) == data
    exact = b"x" * PREVIEW_LIMIT
    assert await read_preview_body(request(Body(chunked(exact, 1 << 20)), "application/json"), LIMIT) == exact


async def test_preview_body_over_the_limit_stops_reading() -> None:
    chunk = 1 << 20
    endless = Body(iter(lambda: b"x" * chunk, None))
    with pytest.raises(AppError) as raised:
        await read_preview_body(request(endless, "application/json"), LIMIT)
    assert (raised.value.status_code, raised.value.message) == (413, corpus.TOO_LARGE)
    assert endless.calls == PREVIEW_LIMIT // chunk + 1


async def test_preview_body_declared_over_the_limit_is_refused_before_reading() -> None:
    body = Body([b"{}"])
    with pytest.raises(AppError) as raised:
        await read_preview_body(request(body, "application/json", length=PREVIEW_LIMIT + 1), LIMIT)
    assert raised.value.status_code == 413 and body.calls == 0
