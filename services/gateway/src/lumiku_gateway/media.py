"""`GET /media/{key}`: images behind signed, expiring URLs (see lumiku_common.media), streamed from storage.

Outside `/api`, so no bearer token is needed: the signature is the authorisation, which is what lets the URLs
work in an `<img>` tag. Objects are immutable (new content gets a new key), so responses are cacheable for
as long as the URL is valid, privately (they are one user's images).
"""

from __future__ import annotations

import time

from fastapi import Request
from starlette.responses import Response, StreamingResponse

from lumiku_common.errors import error_response
from lumiku_common.routing import Router
from lumiku_common.storage import InvalidKey, ObjectInfo, ObjectNotFound
from lumiku_gateway.dependencies import MediaDep

router = Router(include_in_schema=False)


def _headers(info: ObjectInfo, exp: int) -> dict[str, str]:
    max_age = max(0, min(exp - int(time.time()), 31_536_000))
    return {
        "ETag": info.etag,
        "Cache-Control": f"private, max-age={max_age}, immutable",
        "X-Content-Type-Options": "nosniff",
        # Defence in depth: even if an object were ever not an image, it could run nothing.
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Content-Disposition": "inline",
    }


def _not_modified(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match", "")
    return wanted.strip() == "*" or etag in (tag.strip().removeprefix("W/") for tag in wanted.split(","))


@router.api_route("/media/{key:path}", methods=["GET", "HEAD"])
async def media(
    request: Request, media: MediaDep, key: str, exp: str | None = None, sig: str | None = None
) -> Response:
    storage, signer = media.storage, media.signer
    if not signer.verify(key, exp, sig):
        return error_response(403, {"error": "Invalid or expired media URL"})
    try:
        if request.method == "HEAD" or "if-none-match" in request.headers:
            info = await storage.head(key)
            if info is None:
                raise ObjectNotFound(key)
            headers = _headers(info, int(exp or 0))
            if _not_modified(request, info.etag):
                return Response(status_code=304, headers=headers)
            if request.method == "HEAD":
                return Response(headers={**headers, "Content-Length": str(info.size)}, media_type=info.content_type)
        stream = await storage.open(key)
    except (ObjectNotFound, InvalidKey):
        return error_response(404, {"error": "Not found"})
    headers = {**_headers(stream.info, int(exp or 0)), "Content-Length": str(stream.info.size)}
    return StreamingResponse(stream.chunks, media_type=stream.info.content_type, headers=headers)
