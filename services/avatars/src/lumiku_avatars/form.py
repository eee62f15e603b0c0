"""The upload's multipart body, parsed as it streams in, with hard limits.

Nothing is spooled: the image part is counted byte by byte and the request is refused with 413 the moment it
passes the limit, without reading the rest. The filename and declared content type of the part are ignored
(the bytes decide what the file is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import Request

from lumiku_common.errors import BadRequest, PayloadTooLarge

IMAGE_FIELD = "image"
MAX_FIELD_BYTES = 16 * 1024
MAX_PARTS = 40
FORM_ALLOWANCE = MAX_PARTS * 1024 + 64 * 1024  # room for the text fields and part headers beside the image


def too_large(max_file_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"File too large (max {max_file_bytes // (1024 * 1024)}MB)")


class ImageRequired(BadRequest):
    message = "Image file is required"


class MalformedForm(BadRequest):
    message = "Malformed multipart/form-data body"


@dataclass
class UploadForm:
    fields: dict[str, str] = field(default_factory=dict)
    image: bytes | None = None


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    is_file: bool = False
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


class _Collector:
    """Callbacks for python-multipart's push parser; raising from one aborts the parse."""

    def __init__(self, max_file_bytes: int):
        self.max_file_bytes = max_file_bytes
        self.form = UploadForm()
        self.part = _Part()
        self.parts = 0
        self._header_name = b""
        self._header_value = b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._add_header("_header_name", d[s:e]),
            "on_header_value": lambda d, s, e: self._add_header("_header_value", d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def _add_header(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise BadRequest(f"Too many form fields (max {MAX_PARTS})")
        self.part = _Part()

    def on_header_end(self) -> None:
        self.part.headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self.part.headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if disposition != b"form-data" or not name:
            raise MalformedForm()
        self.part.name = name.decode("utf-8", errors="replace")
        self.part.is_file = b"filename" in options

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.part.size += end - start
        is_file = self.part.is_file or self.part.name == IMAGE_FIELD
        if self.part.size > (self.max_file_bytes if is_file else MAX_FIELD_BYTES):
            if is_file:
                raise too_large(self.max_file_bytes)
            raise BadRequest(f"Form field '{self.part.name[:50]}' is too long")
        if self.part.name == IMAGE_FIELD or not self.part.is_file:
            self.part.chunks.append(data[start:end])

    def on_part_end(self) -> None:
        part, form = self.part, self.form
        if part.name == IMAGE_FIELD:
            if form.image is not None:
                raise BadRequest("Only one image file is allowed")
            form.image = b"".join(part.chunks)
            return
        if part.is_file:
            return  # a file under another name is not the image; its bytes were never kept
        if part.name in form.fields:
            raise BadRequest(f"Form field '{part.name[:50]}' was sent twice")
        try:
            form.fields[part.name] = b"".join(part.chunks).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"Form field '{part.name[:50]}' is not valid UTF-8") from exc


async def read_upload_form(request: Request, max_file_bytes: int) -> UploadForm:
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ImageRequired()  # a JSON or url-encoded body cannot carry the file
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_file_bytes + FORM_ALLOWANCE:
        raise too_large(max_file_bytes)  # refused before a single body byte is read
    collector = _Collector(max_file_bytes)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_file_bytes + FORM_ALLOWANCE:
                raise too_large(max_file_bytes)
            parser.write(chunk)
    except MultipartParseError as exc:
        raise MalformedForm() from exc
    if parser.state != MultipartState.END:
        # python-multipart's finalize() does not check this: a body cut off mid-part would otherwise look like a
        # form without its image ("Image file is required") or, worse, with the parts that did arrive.
        raise MalformedForm()
    return collector.form


async def read_preview_body(request: Request, max_file_bytes: int) -> bytes:
    """A JSON body carrying a base64 image: capped at what a `max_file_bytes` image takes in base64 plus the
    text fields, refused with 413 the moment it passes that (without reading the rest)."""
    limit = -(-max_file_bytes * 4 // 3) + FORM_ALLOWANCE
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(max_file_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(max_file_bytes)
        chunks.append(chunk)
    return b"".join(chunks)
