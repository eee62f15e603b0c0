"""Generator of quirky HTTP requests, as raw bytes (an HTTP client library would normalise most of them):
whitespace, control characters and oversize in headers, duplicated and folded headers, bodies where none is
expected, odd framing (Transfer-Encoding, Content-Length, chunk sizes, Expect), junk and extremes in paths and
query strings, unusual methods and request-target forms.

A request is rendered for a running suite: `{token}` becomes a valid bearer token and `{project}` the id of a
project that user owns. What every case must get is checked by test_quirks.py: never a 5xx, errors in the
spec's shape, the server still up. `statuses`, when set, narrows the answer further.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

APP = "/api/apps/avatar-creator"
AUTH = b"Authorization: Bearer {token}\r\n"
JSON = b"Content-Type: application/json\r\n"
PROJECT = b'{"name": "Quirk"}'

# Authenticated GETs on each service, and one composed route (the gateway rewrites projects' answers).
READS = {
    "projects-list": f"{APP}/projects",
    "project": f"{APP}/projects/{{project}}",
    "avatars-list": f"{APP}/avatars",
    "stats": f"{APP}/stats",
    "balance": "/api/credits/balance",
    "transactions": "/api/credits/transactions",
}


@dataclass(frozen=True)
class Quirk:
    name: str
    raw: bytes
    statuses: frozenset[int] | None = None  # None: any answer below 500

    def render(self, token: str, project: str) -> bytes:
        return self.raw.replace(b"{token}", token.encode()).replace(b"{project}", project.encode())


def request(
    method: str, target: str, headers: bytes = b"", body: bytes = b"", *, auth: bool = True, length: bool = True
) -> bytes:
    """One HTTP/1.1 request; `length`: add a Content-Length for `body` (when there is one)."""
    framing = b"Content-Length: %d\r\n" % len(body) if body and length else b""
    head = f"{method} {target} HTTP/1.1\r\nHost: lumiku.test\r\n".encode()
    return head + (AUTH if auth else b"") + headers + framing + b"Connection: close\r\n\r\n" + body


def _q(name: str, raw: bytes, *statuses: int) -> Quirk:
    return Quirk(name, raw, frozenset(statuses) if statuses else None)


def header_whitespace() -> Iterator[Quirk]:
    headers = {
        "accept": b"Accept: application/json",
        "accept-language": b"Accept-Language: en",
        "user-agent": b"User-Agent: quirk/1",
        "if-none-match": b'If-None-Match: "x"',
        "x-request-id": b"X-Request-Id: quirk-1",
        "traceparent": b"Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "custom": b"X-Custom: 1",
    }
    pads = {"trailing-space": (b"", b" "), "leading-tab": (b"\t", b""), "both": (b"  ", b" \t ")}
    for route, target in READS.items():
        for header, line in headers.items():
            name, _, value = line.partition(b": ")
            for pad, (before, after) in pads.items():
                padded = name + b": " + before + value + after + b"\r\n"
                yield _q(f"ws-{pad}-{header}-{route}", request("GET", target, padded), 200)
    yield _q(
        "ws-authorization-trailing",
        request("GET", f"{APP}/projects", auth=False).replace(
            b"Host: lumiku.test\r\n", b"Host: lumiku.test\r\nAuthorization: Bearer {token}  \r\n"
        ),
        200,
    )
    yield _q(
        "ws-content-type-post", request("POST", f"{APP}/projects", b"Content-Type: application/json \r\n", PROJECT), 201
    )


def header_junk() -> Iterator[Quirk]:
    target = f"{APP}/projects"
    yield _q("nul-in-header-value", request("GET", target, b"X-A: a\x00b\r\n"), 400)
    yield _q("ctl-in-header-value", request("GET", target, b"X-A: a\x01b\r\n"), 200, 400)
    yield _q("del-in-header-value", request("GET", target, b"X-A: a\x7fb\r\n"), 200, 400)
    yield _q("latin1-in-header-value", request("GET", target, b"User-Agent: caf\xe9\r\n"), 200, 400)
    yield _q("utf8-in-header-value", request("GET", target, "User-Agent: ✓\r\n".encode()), 200, 400)
    yield _q("space-in-header-name", request("GET", target, b"X A: b\r\n"), 400)
    yield _q("space-before-colon", request("GET", target, b"X-A : b\r\n"), 400)
    yield _q("empty-header-name", request("GET", target, b": b\r\n"), 400)
    yield _q("no-colon", request("GET", target, b"X-A\r\n"), 400)
    yield _q("obs-fold", request("GET", target, b"X-A: a\r\n b\r\n"), 200, 400)
    yield _q(
        "obs-fold-authorization",
        request("GET", target, auth=False).replace(
            b"Host: lumiku.test\r\n", b"Host: lumiku.test\r\nAuthorization: Bearer\r\n {token}\r\n"
        ),
        200,
        400,
        401,
    )
    yield _q("bare-lf-lines", b"GET /api/health HTTP/1.1\nHost: x\nConnection: close\n\n", 200, 400)
    yield _q("one-header-17kb", request("GET", target, b"X-Big: " + b"a" * 17_000 + b"\r\n"), 431)
    yield _q(
        "headers-70kb", request("GET", target, b"".join(b"X-%d: %s\r\n" % (i, b"a" * 7000) for i in range(10))), 431
    )
    yield _q(
        "authorization-17kb",
        request("GET", target, auth=False).replace(
            b"Host: lumiku.test\r\n", b"Host: lumiku.test\r\nAuthorization: Bearer " + b"a" * 17_000 + b"\r\n"
        ),
        431,
    )
    yield _q("x-request-id-junk", request("GET", target, b'X-Request-Id: ../../etc;"\r\n'), 200)
    yield _q("traceparent-junk", request("GET", target, b"Traceparent: zz-not-a-trace\r\n"), 200)
    yield _q("cookie", request("GET", target, b"Cookie: a=b; c\r\n"), 200)
    yield _q("x-service-token-forged", request("GET", target, b"X-Service-Token: forged\r\n"), 200)
    yield _q("x-forwarded-for-junk", request("GET", target, b"X-Forwarded-For: not-an-ip, \x7f\r\n"), 200, 400)
    yield _q("accept-encoding-garbage", request("GET", target, b"Accept-Encoding: br;q=zz, *;q=-1\r\n"), 200)
    yield _q("accept-csv-transactions", request("GET", "/api/credits/transactions", b"Accept: text/csv \r\n"), 200)


def duplicates() -> Iterator[Quirk]:
    target = f"{APP}/projects"
    yield _q("dup-authorization-valid-first", request("GET", target, b"Authorization: Bearer nope\r\n"), 200, 401)
    yield _q(
        "dup-authorization-bad-first",
        request("GET", target, auth=False).replace(
            b"Host: lumiku.test\r\n",
            b"Host: lumiku.test\r\nAuthorization: Bearer nope\r\nAuthorization: Bearer {token}\r\n",
        ),
        200,
        401,
    )
    yield _q("dup-host", request("GET", target, b"Host: other.test\r\n"), 200, 400)
    yield _q("no-host", b"GET /api/health HTTP/1.1\r\nConnection: close\r\n\r\n", 200, 400)
    yield _q(
        "dup-content-type", request("POST", target, JSON + b"Content-Type: text/plain\r\n", PROJECT), 201, 400, 415
    )
    yield _q("dup-x-request-id", request("GET", target, b"X-Request-Id: a\r\nX-Request-Id: b\r\n"), 200)
    yield _q(
        "dup-idempotency-key",
        request(
            "POST",
            "/api/credits/grants",
            JSON + b"Idempotency-Key: a\r\nIdempotency-Key: b\r\n",
            b'{"userId": "u", "amount": 1}',
        ),
        400,
        403,
    )
    yield _q(
        "dup-accept",
        request("GET", "/api/credits/transactions", b"Accept: text/csv\r\nAccept: application/json\r\n"),
        200,
    )


def bodies() -> Iterator[Quirk]:
    yield _q("get-with-body", request("GET", f"{APP}/projects", JSON, b'{"x": 1}'), 200)
    yield _q("get-with-big-body", request("GET", f"{APP}/avatars", JSON, b"x" * 300_000), 200)
    yield _q(
        "get-with-chunked-body",
        request("GET", f"{APP}/projects", b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n", length=False),
        200,
    )
    yield _q("get-one-project-with-body", request("GET", f"{APP}/projects/{{project}}", JSON, b"{}"), 200)
    yield _q("delete-missing-with-body", request("DELETE", f"{APP}/projects/01NOPE", JSON, b'{"force": true}'), 404)
    yield _q("delete-avatar-with-body", request("DELETE", f"{APP}/avatars/01NOPE", JSON, b"{}"), 404)
    yield _q("head-health-with-body", request("HEAD", "/api/health", b"", b"xyz", auth=False), 200, 405)
    yield _q("head-api", request("HEAD", f"{APP}/projects"), 405)
    yield _q("post-no-body", request("POST", f"{APP}/projects", JSON), 400)
    yield _q("post-empty-json", request("POST", f"{APP}/projects", JSON, b"{}"), 400)
    yield _q("post-nul-json", request("POST", f"{APP}/projects", JSON, b'{"name": "a\\u0000b"}'), 201, 400)
    yield _q("post-raw-nul-body", request("POST", f"{APP}/projects", JSON, b'{"name": "a\x00b"}'), 400)
    yield _q("post-not-utf8", request("POST", f"{APP}/projects", JSON, b'{"name": "\xff\xfe"}'), 400)
    yield _q("post-huge-number", request("POST", f"{APP}/projects", JSON, b'{"name": 1e999999}'), 400)
    yield _q("post-deep-json", request("POST", f"{APP}/projects", JSON, b"[" * 10_000 + b"]" * 10_000), 400)
    yield _q("put-with-no-body", request("PUT", f"{APP}/projects/{{project}}", JSON), 400)
    yield _q(
        "post-form-to-json",
        request("POST", f"{APP}/projects", b"Content-Type: application/x-www-form-urlencoded\r\n", b"name=x"),
        400,
    )


def framing() -> Iterator[Quirk]:
    target = f"{APP}/projects"
    chunked = b"Transfer-Encoding: chunked\r\n"
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(PROJECT), PROJECT)
    yield _q("chunked-post", request("POST", target, JSON + chunked, body, length=False), 201)
    yield _q(
        "chunked-extension",
        request("POST", target, JSON + chunked, body.replace(b"\r\n", b";ext=1\r\n", 1), length=False),
        201,
        400,
    )
    yield _q(
        "chunked-trailer",
        request("POST", target, JSON + chunked, body[:-2] + b"X-Trailer: 1\r\n\r\n", length=False),
        201,
        400,
    )
    yield _q("chunked-bad-size", request("POST", target, JSON + chunked, b"zz\r\nab\r\n0\r\n\r\n", length=False), 400)
    yield _q(
        "chunked-negative-size", request("POST", target, JSON + chunked, b"-1\r\nab\r\n0\r\n\r\n", length=False), 400
    )
    yield _q(
        "chunked-overflow-size",
        request("POST", target, JSON + chunked, b"fffffffffffffffffff\r\nab\r\n0\r\n\r\n", length=False),
        400,
    )
    yield _q(
        "chunked-size-space",
        request("POST", target, JSON + chunked, b"11 \r\n" + PROJECT + b"\r\n0\r\n\r\n", length=False),
        201,
        400,
    )
    yield _q(
        "chunked-chunked",
        request("POST", target, JSON + b"Transfer-Encoding: chunked, chunked\r\n", body, length=False),
        400,
    )
    yield _q("te-twice", request("POST", target, JSON + chunked + chunked, body, length=False), 400)
    yield _q(
        "te-gzip", request("POST", target, JSON + b"Transfer-Encoding: gzip\r\n", PROJECT, length=False), 400, 411, 501
    )
    yield _q("te-identity", request("POST", target, JSON + b"Transfer-Encoding: identity\r\n", PROJECT), 400, 201)
    yield _q(
        "te-xchunked", request("POST", target, JSON + b"Transfer-Encoding: xchunked\r\n", body, length=False), 400, 501
    )
    yield _q("te-and-length", request("POST", target, JSON + chunked, body), 400)
    yield _q(
        "te-on-http10",
        request("POST", target, JSON + chunked, body, length=False).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        201,
        400,
    )
    yield _q(
        "length-twice-equal",
        request("POST", target, JSON + b"Content-Length: %d\r\n" % len(PROJECT), PROJECT),
        201,
        400,
    )
    yield _q("length-twice-differ", request("POST", target, JSON + b"Content-Length: 3\r\n", PROJECT), 400)
    yield _q(
        "length-list",
        request(
            "POST", target, JSON + b"Content-Length: %d, %d\r\n" % (len(PROJECT), len(PROJECT)), PROJECT, length=False
        ),
        400,
        201,
    )
    yield _q(
        "length-plus",
        request("POST", target, JSON + b"Content-Length: +%d\r\n" % len(PROJECT), PROJECT, length=False),
        400,
    )
    yield _q("length-negative", request("POST", target, JSON + b"Content-Length: -1\r\n", PROJECT, length=False), 400)
    yield _q("length-hex", request("POST", target, JSON + b"Content-Length: 0x11\r\n", PROJECT, length=False), 400)
    yield _q(
        "length-huge",
        request("POST", target, JSON + b"Content-Length: 99999999999999999999999\r\n", PROJECT, length=False),
        400,
        413,
    )
    yield _q("length-short", request("POST", target, JSON + b"Content-Length: 5\r\n", PROJECT, length=False), 400)
    yield _q(
        "length-space",
        request("POST", target, JSON + b"Content-Length:  %d \r\n" % len(PROJECT), PROJECT, length=False),
        201,
        400,
    )
    yield _q("expect-100", request("POST", target, JSON + b"Expect: 100-continue\r\n", PROJECT), 201)
    yield _q("expect-100-upper", request("POST", target, JSON + b"Expect: 100-CONTINUE \r\n", PROJECT), 201)
    yield _q("expect-other", request("POST", target, JSON + b"Expect: teapot\r\n", PROJECT), 201, 417)
    yield _q("expect-100-on-get", request("GET", target, b"Expect: 100-continue\r\n"), 200)
    yield _q(
        "upgrade-websocket",
        request("GET", target, b"Connection: Upgrade\r\nUpgrade: websocket\r\n"),
        200,
        400,
        404,
        426,
    )
    yield _q(
        "upgrade-h2c",
        request(
            "GET",
            target,
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        ),
        200,
        400,
    )


def paths() -> Iterator[Quirk]:
    bad_path, bad_query = frozenset({400}), frozenset({400})
    for target in (
        f"{APP}/projects/%00",
        f"{APP}/projects/%00/avatars",
        f"{APP}/avatars/a%00b",
        f"{APP}/avatars/%0d%0aX-Injected:%201",
        f"{APP}/avatars/%zz",
        f"{APP}/avatars/%",
        f"{APP}/avatars/%C3%28",
        f"{APP}/avatars/%ED%A0%80",  # a UTF-16 surrogate, not UTF-8
        f"{APP}/avatars/%C0%AF",  # overlong '/'
        "/api/credits/%00",
        f"{APP}/projects/%00%00%00",
    ):
        yield Quirk(f"path-junk-{target.rsplit('/', 1)[-1] or 'slash'}-{len(target)}", request("GET", target), bad_path)
    for param in ("search", "projectId", "page", "limit", "sourceType", "sort"):
        for value in ("%00", "a%00b", "%zz", "%", "%FF", "%C3%28", "%0a"):
            yield Quirk(f"query-junk-{param}-{value}", request("GET", f"{APP}/avatars?{param}={value}"), bad_query)
    for value in ("%00", "%FF"):
        yield Quirk(
            f"query-junk-transactions-from-{value}",
            request("GET", f"/api/credits/transactions?from={value}"),
            bad_query,
        )
        yield Quirk(f"query-junk-projects-page-{value}", request("GET", f"{APP}/projects?page={value}"), bad_query)
    yield _q("query-junk-key", request("GET", f"{APP}/avatars?%00=1"), 400)
    yield _q("raw-nul-in-path", request("GET", f"{APP}/avatars/a").replace(b"/a ", b"/a\x00 "), 400)
    yield _q("raw-space-in-path", request("GET", f"{APP}/avatars/a").replace(b"/a ", b"/a b "), 400)
    yield _q("raw-utf8-in-path", request("GET", f"{APP}/avatars/caf\u00e9"), 400, 404)
    yield _q("raw-latin1-in-query", request("GET", f"{APP}/avatars?search=x").replace(b"=x", b"=caf\xe9"), 400)
    yield _q("raw-utf8-in-query", request("GET", f"{APP}/avatars?search=caf\u00e9"), 200, 400)
    yield _q("fragment-in-target", request("GET", f"{APP}/projects#frag"), 200, 400)
    yield _q("long-id-segment", request("GET", f"{APP}/projects/" + "a" * 7000), 404)
    yield _q("long-avatar-id", request("GET", f"{APP}/avatars/" + "a" * 7000), 404)
    yield _q("long-avatar-id-delete", request("DELETE", f"{APP}/avatars/" + "a" * 7000), 404)
    yield _q("long-project-put", request("PUT", f"{APP}/projects/" + "a" * 7000, JSON, PROJECT), 404)
    yield _q("long-search", request("GET", f"{APP}/avatars?search=" + "a" * 7000), 200, 400)
    yield _q("long-project-filter", request("GET", f"{APP}/avatars?projectId=" + "a" * 7000), 200, 400, 404)
    yield _q(
        "long-upload-project", request("POST", f"{APP}/projects/" + "a" * 5000 + "/avatars", JSON, b"{}"), 400, 404, 415
    )
    yield _q("url-9kb", request("GET", f"{APP}/avatars?search=" + "a" * 9000), 414)
    yield _q("many-params", request("GET", f"{APP}/avatars?" + "&".join(f"p{i}=1" for i in range(900))), 200, 400)
    yield _q("repeated-page", request("GET", f"{APP}/avatars?page=1&page=2&page=x"), 200, 400)
    yield _q("dot-segments", request("GET", f"{APP}/projects/../projects"), 200, 400, 404)
    yield _q("encoded-slash", request("GET", f"{APP}/projects/a%2Fb"), 404)
    yield _q(
        "encoded-traversal-internal", request("GET", f"{APP}/projects/..%2f..%2f..%2finternal%2fprojects%2fx"), 404
    )
    yield _q("double-slash", request("GET", "//api/health", auth=False), 200, 404)
    yield _q("trailing-slash", request("GET", f"{APP}/projects/"), 404, 200)
    yield _q("internal-route", request("GET", "/internal/credits/holds"), 404, 405)


def numbers() -> Iterator[Quirk]:
    values = (
        "0",
        "-1",
        "1.5",
        "1e3",
        "NaN",
        "Infinity",
        "",
        " 1",
        "0x10",
        "9" * 30,
        str(2**63),
        str(2**64),
        "\uff11",
    )  # last: a fullwidth 1
    for param in ("page", "limit"):
        for value in values:
            for name, target in (
                ("projects", f"{APP}/projects"),
                ("avatars", f"{APP}/avatars"),
                ("transactions", "/api/credits/transactions"),
            ):
                yield _q(
                    f"number-{name}-{param}-{value[:12]}",
                    request("GET", f"{target}?{param}={value.replace(' ', '%20')}"),
                    200,
                    400,
                )
    yield _q("number-huge-page-in-range", request("GET", f"{APP}/avatars?page=2147483647"), 200, 400)
    yield _q("number-huge-page-projects", request("GET", f"{APP}/projects?page=2147483647&limit=100"), 200, 400)
    yield _q(
        "number-huge-page-transactions", request("GET", "/api/credits/transactions?page=2147483647&limit=100"), 200, 400
    )


# Valid ISO-8601 times whose UTC equivalent is outside year 1..9999 once converted (they were a 500, and with
# format=csv a 200 head and a broken stream): now 400 before the first byte.


def dates() -> Iterator[Quirk]:
    values = (
        "0001-01-01T00:00:00%2B14:00",
        "9999-12-31T23:59:59-14:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "0000-01-01T00:00:00Z",
        "10000-01-01T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-02-30",
        "2024-01-01T00:00:00+14:00",  # '+' unencoded: a space
        "2024-01-01T25:00:00Z",
        "-1",
        "1e20",
        "99999999999999999999",
        "253402300800",  # 10000-01-01 as a Unix time
        "now",
    )
    for param in ("from", "to"):
        for value in values:
            for fmt in ("", "&format=csv"):
                target = f"/api/credits/transactions?{param}={value}{fmt}"
                name = f"date-{param}-{value}{fmt.replace('&format=', '-')}"
                yield _q(name, request("GET", target), 200, 400)
    yield _q(
        "date-range-reversed",
        request("GET", "/api/credits/transactions?from=9999-12-31T00:00:00Z&to=0001-01-01T00:00:00Z"),
        200,
        400,
    )
    yield _q(
        "date-extremes-both-csv",
        request(
            "GET", "/api/credits/transactions?from=0001-01-01T00:00:00%2B14:00&to=9999-12-31T23:59:59-14:00&format=csv"
        ),
        400,
    )


def methods() -> Iterator[Quirk]:
    for method in ("TRACE", "PROPFIND", "MKCOL", "LOCK", "SEARCH", "PURGE", "LINK", "QUERY", "BREW"):
        yield _q(f"method-{method}", request(method, f"{APP}/projects"), 400, 405, 501)
    yield _q("method-options-plain", request("OPTIONS", f"{APP}/projects"), 204, 403, 405)
    yield _q(
        "method-options-preflight",
        request(
            "OPTIONS",
            f"{APP}/projects",
            b"Origin: https://x.test\r\nAccess-Control-Request-Method: POST\r\n",
            auth=False,
        ),
        403,
    )
    yield _q("method-patch", request("PATCH", f"{APP}/projects/{{project}}", JSON, PROJECT), 405)
    yield _q("method-lowercase", request("get", f"{APP}/projects"), 400, 405)
    yield _q(
        "method-connect",
        b"CONNECT lumiku.test:443 HTTP/1.1\r\nHost: lumiku.test:443\r\nConnection: close\r\n\r\n",
        400,
        404,
        405,
    )
    yield _q("method-garbage", b"G\x00T / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400)
    yield _q("method-long", request("X" * 5000, f"{APP}/projects"), 400, 405, 501)
    yield _q("absolute-form", request("GET", f"http://lumiku.test{APP}/projects"), 200, 400)
    yield _q("absolute-form-other-host", request("GET", "http://evil.test/api/health", auth=False), 200, 400)
    yield _q("absolute-form-internal", request("GET", "http://127.0.0.1/internal/credits/holds"), 400, 404, 405)
    yield _q("absolute-form-https", request("GET", f"https://lumiku.test{APP}/projects"), 200, 400)
    yield _q("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400, 404, 405)
    yield _q("authority-form-get", b"GET lumiku.test:80 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400, 404)
    yield _q("relative-target", b"GET api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400, 404)
    yield _q("http-1.0", b"GET /api/health HTTP/1.0\r\n\r\n", 200)
    yield _q("http-0.9", b"GET /api/health\r\n\r\n", 200, 400)  # llhttp reads it as HTTP/0.9
    yield _q("http-2.0-line", b"GET /api/health HTTP/2.0\r\nHost: x\r\n\r\n", 200, 400, 505)
    yield _q("http-1.9", b"GET /api/health HTTP/1.9\r\nHost: x\r\nConnection: close\r\n\r\n", 200, 400, 505)
    yield _q("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400)
    yield _q("tls-hello-on-http", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400)
    yield _q("leading-crlf", b"\r\n\r\n" + request("GET", "/api/health", auth=False), 200, 400)


def cases() -> list[Quirk]:
    corpus = [
        *header_whitespace(),
        *header_junk(),
        *duplicates(),
        *bodies(),
        *framing(),
        *paths(),
        *numbers(),
        *dates(),
        *methods(),
    ]
    names = [q.name for q in corpus]
    assert len(names) == len(set(names)), "corpus case names must be unique"
    return corpus
