"""The multipart body's structure errors through the whole stack (gateway, avatars, credits): each is a clear
4xx that changes nothing. The parser's own edge cases are in unit/test_form.py; this proves they survive the
gateway's streaming proxy and reach the client in the spec's shape, with no row, object or charge."""

from __future__ import annotations

import pytest
from avatars_samples import jpeg

from lumiku_avatars.form import MAX_FIELD_BYTES, MAX_PARTS

APP = "/api/apps/avatar-creator"
BOUNDARY = b"stack-boundary-5678"
IMAGE = jpeg(64, 64)


def part(name: bytes, value: bytes, filename: bytes | None = None, disposition: bytes | None = None) -> bytes:
    named = b'form-data; name="' + name + b'"'
    header = disposition or named + (b'; filename="' + filename + b'"' if filename else b"")
    return b"--" + BOUNDARY + b"\r\nContent-Disposition: " + header + b"\r\n\r\n" + value + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


def with_image(*parts: bytes) -> bytes:
    return form(*parts, part(b"image", IMAGE, b"a.jpg"))


CASES = {
    "41-parts": (
        with_image(*(part(f"f{i}".encode(), b"x") for i in range(MAX_PARTS))),
        f"Too many form fields (max {MAX_PARTS})",
    ),
    "attachment-disposition": (with_image(part(b"", b"x", disposition=b'attachment; name="name"')), None),
    "nameless-part": (with_image(part(b"", b"x", disposition=b"form-data")), None),
    "16kb-plus-1-field": (with_image(part(b"name", b"a" * (MAX_FIELD_BYTES + 1))), "Form field 'name' is too long"),
    "two-images": (
        form(part(b"name", b"A"), part(b"image", IMAGE, b"a.jpg"), part(b"image", IMAGE, b"b.jpg")),
        "Only one image file is allowed",
    ),
    "field-twice": (with_image(part(b"name", b"A"), part(b"name", b"B")), "Form field 'name' was sent twice"),
    "non-utf8": (with_image(part(b"name", b"caf\xe9")), "Form field 'name' is not valid UTF-8"),
    "cut-before-closing-boundary": (form(part(b"name", b"A"), part(b"image", IMAGE, b"a.jpg"))[:-30], None),
}


@pytest.mark.parametrize(("body", "error"), list(CASES.values()), ids=list(CASES))
async def test_structure_errors_are_400_and_change_nothing(suite, body, error):
    user, headers = suite.user()
    project = await suite.project(headers)
    response = await suite.api.post(
        f"{APP}/projects/{project}/avatars",
        content=body,
        headers={**headers, "content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}"},
    )
    assert response.status_code == 400, response.text
    assert response.json() == {"error": error or "Malformed multipart/form-data body"}
    await suite.assert_untouched(user, headers)


async def test_a_chunked_body_over_the_limit_is_413_without_being_read_to_its_end(suite):
    """No Content-Length to refuse up front: the count while streaming must stop it, through the gateway."""
    user, headers = suite.user()
    project = await suite.project(headers)
    megabyte, sent, total = b"x" * 1024 * 1024, 0, 40

    async def body():
        nonlocal sent
        yield b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        for _ in range(total):
            sent += 1
            yield megabyte

    response = await suite.api.post(
        f"{APP}/projects/{project}/avatars",
        content=body(),
        headers={**headers, "content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}"},
    )
    assert "content-length" not in response.request.headers  # really chunked
    assert (response.status_code, response.json()) == (413, {"error": "File too large (max 10MB)"})
    assert sent < total, f"the whole {total} MB body was read"
    await suite.assert_untouched(user, headers)
