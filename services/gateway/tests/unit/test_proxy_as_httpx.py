"""The proxy builds the upstream URL and headers as strings itself (no httpx objects on the hot path): each is
what httpx made of the same input, so nothing a client or a service sees has changed."""

from __future__ import annotations

import random

import httpx
import pytest

from lumiku_gateway.proxy import _response_headers, _text, _url
from lumiku_gateway.settings import GatewaySettings
from lumiku_gateway.upstreams import Upstreams


def _as_httpx(base: httpx.URL, target: bytes) -> str | type[Exception]:
    try:
        return str(base.copy_with(raw_path=target))
    except Exception as exc:
        return type(exc)


def _ours(upstream, target: bytes) -> str | type[Exception]:  # type: ignore[no-untyped-def]
    try:
        return _url(upstream, target)
    except Exception as exc:
        return type(exc)


TARGETS = [
    b"/api/apps/avatar-creator/projects",
    b"/api/a%2Fb/c%20d;v=1?q=%E2%9C%93&x",
    b"/api/x?q=a?b&c={d}&e=`f`&g=h/../i",
    b"/api/x/../y",
    b"/api/x/./y?z",
    b"/api/x/..",
    b"/api/.hidden/..x/...",
    b"/api/x y",
    b'/api/"x"<y>{z}`w`',
    b"/api/x#frag?q#r",
    b"/api/%zz/%/100%",
    b"/api/caf\xc3\xa9",
    b"/api/x?\xff",
    b"/api/x\x7f",
    b"/api/x?" + b"q" * 70000,
    b"/api/" + b"p" * 70000,
]


@pytest.mark.parametrize("base", ["http://projects:8000", "HTTP://Projects:80/prefix/", "http://[::1]:9000"])
def test_the_upstream_url_is_the_one_httpx_made(base):
    settings = GatewaySettings(service_urls={"projects": base})
    upstream = Upstreams(settings).get("projects")
    assert upstream is not None
    rng = random.Random(3)
    alphabet = b"/?%.#&=aZ09-_~ \"<>`{}|\\^[]:@!$'()*+,;\x00\x7f\xc3\xa9"
    fuzzed = [bytes(rng.choices(alphabet, k=rng.randint(0, 12))) for _ in range(3000)]
    for target in TARGETS + [b"/" + t for t in fuzzed]:
        assert _ours(upstream, target) == _as_httpx(upstream.base_url, target), target


RAW = [
    (b"Content-Type", b"application/json"),
    (b"Set-Cookie", b"a=1"),
    (b"set-cookie", b"b=2"),
    (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
    (b"Access-Control-Allow-Origin", b"*"),
    (b"X-Request-ID", b"r"),
    (b"Transfer-Encoding", b"chunked"),
    (b"ETag", b'W/"1"'),
]


@pytest.mark.parametrize(
    "extra", [b"plain", "caf\u00e9 \u2713".encode(), b"caf\xe9"], ids=["ascii", "utf-8", "latin-1"]
)
def test_headers_decode_and_return_as_httpx_gave_them(extra):
    raw = [*RAW, (b"X-Extra", extra)]
    expected = {
        k: v
        for k, v in httpx.Headers(raw).items()
        if k not in ("date", "x-request-id", "transfer-encoding") and not k.startswith("access-control-")
    }
    assert _response_headers(raw) == expected
    lowered = [(k.lower(), v) for k, v in raw]
    assert _text(lowered) == httpx.Headers(lowered).multi_items()
