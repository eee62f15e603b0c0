"""The avatars process's memory while it processes hostile images (~15 s, outside the fast tier though it needs
no server), measured in a real child process (peak and resident set from /proc), one upload alone and then three
at once via `images.process`.

Each image is refused or processed; either way the process must not grow by more than `PEAK_BUDGET` at its
peak nor keep more than `RETAINED_BUDGET` afterwards. Skip it with `-k "not memory"` when iterating.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from PIL import Image

MB = 1024 * 1024
PEAK_BUDGET = 300 * MB
RETAINED_BUDGET = 100 * MB

# Runs in the child: baseline after imports, then one upload, then three concurrent ones.
CHILD = r"""
import asyncio, gc, json, sys
from lumiku_avatars import images
from lumiku_common.errors import AppError

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

async def run(data, limits, n):
    budget = images.DecodeBudget(288 * 1024 * 1024)  # AvatarsSettings.decode_memory_bytes
    results = await asyncio.gather(*(images.process(data, limits, budget) for _ in range(n)), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, AppError):
            raise r
    return [r.status_code if isinstance(r, AppError) else 201 for r in results]

data = open(sys.argv[1], "rb").read()
limits = images.Limits(40_000_000, 65_535)  # the service defaults
images.configure(limits.max_pixels)
try:
    estimate = images.admit(data, limits)
except AppError:
    estimate = None
gc.collect()
base = status("VmRSS:")
out = {"estimate": estimate}
for label, n in (("single", 1), ("concurrent", 3)):
    statuses = asyncio.run(run(data, limits, n))
    gc.collect()
    out[label] = {"statuses": statuses, "peak": status("VmHWM:") - base, "after": status("VmRSS:") - base}
print(json.dumps(out))
"""


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(size: tuple[int, int], depth: int, colour: int, rows: Iterable[bytes], extra: bytes = b"") -> bytes:
    """A PNG streamed row by row, so a 240 MB (decoded) image never exists in this process."""
    compressor = zlib.compressobj(6)
    idat = b"".join(compressor.compress(b"\x00" + row) for row in rows) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", *size, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _rows(height: int, row: bytes) -> Iterator[bytes]:
    return (row for _ in range(height))


def _jpeg(image: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **params)
    return out.getvalue()


def _grey16() -> bytes:
    return _png((8000, 5000), 16, 0, _rows(5000, bytes(range(256)) * 62 + bytes(128)))


def _rgb16() -> bytes:
    return _png((8000, 5000), 16, 2, _rows(5000, b"\x12\x34\x56\x78\x9a\xbc" * 8000))


def _palette() -> bytes:
    palette = _chunk(b"PLTE", bytes(range(256)) * 3)
    return _png((8000, 5000), 8, 3, _rows(5000, bytes(range(250)) * 32), palette)


def _progressive() -> bytes:
    """35 MP, 4:4:4 and progressive: libjpeg keeps every coefficient (6 bytes a pixel) besides the pixels."""
    gradient = Image.linear_gradient("L").resize((7000, 5000))
    return _jpeg(
        Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_180), gradient)),
        progressive=True,
        subsampling=0,
        quality=75,
    )


def _cmyk() -> bytes:
    return _jpeg(Image.new("CMYK", (8000, 5000), (10, 200, 30, 5)), quality=75)


def _palette_20mp() -> bytes:
    palette = _chunk(b"PLTE", bytes(range(256)) * 3)
    return _png((4000, 5000), 8, 3, _rows(5000, bytes(range(250)) * 16), palette)


def _gradient(size: tuple[int, int]) -> Image.Image:
    gradient = Image.linear_gradient("L").resize(size)
    return Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_TOP_BOTTOM), gradient))


def _progressive_12mp() -> bytes:
    return _jpeg(_gradient((4000, 3000)), progressive=True, subsampling=0, quality=75)


def _cmyk_16mp() -> bytes:
    return _jpeg(Image.new("CMYK", (4000, 4000), (10, 200, 30, 5)), quality=75)


def _rotated_15mp() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(_gradient((5000, 3000)), quality=85, exif=exif.tobytes())


def _rotated_24mp() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(_gradient((6000, 4000)), quality=85, exif=exif.tobytes())


def _webp_8mp() -> bytes:
    out = io.BytesIO()
    _gradient((3000, 2600)).save(out, "WEBP", quality=50, method=0)
    return out.getvalue()


def _rgb_30mp() -> bytes:
    """An ordinary big photo (30 MP): accepted, the baseline for what a legitimate upload costs."""
    return _jpeg(Image.linear_gradient("L").resize((6000, 5000)).convert("RGB"), quality=85)


def _webp() -> bytes:
    """WebP's decoder hands Pillow a copy of every pixel, and its encoder converts them all again."""
    out = io.BytesIO()
    Image.linear_gradient("L").resize((8000, 5000)).convert("RGB").save(out, "WEBP", quality=50, method=0)
    return out.getvalue()


# name: (builder, status with the default limits). Refused ones must be refused before decoding (no growth);
# accepted ones sit near the decoded-bytes budget, so they show what the largest allowed images cost.
IMAGES = {
    "grey16_8000x5000_png": (_grey16, 201),  # decoded straight to 8 bits: 1 byte a pixel
    "rgb16_8000x5000_png": (_rgb16, 201),  # 4 bytes a pixel once normalised: 160 MB, under the 200 MB cap
    "palette_8000x5000_png": (_palette, 201),
    "progressive_444_35mp_jpeg": (_progressive, 400),
    "cmyk_40mp_jpeg": (_cmyk, 400),
    "webp_40mp": (_webp, 400),
    "rgb_30mp_jpeg": (_rgb_30mp, 201),
    "palette_20mp_png": (_palette_20mp, 201),
    "progressive_444_12mp_jpeg": (_progressive_12mp, 201),
    "cmyk_16mp_jpeg": (_cmyk_16mp, 201),
    "rotated_15mp_jpeg": (_rotated_15mp, 201),
    "rotated_24mp_jpeg": (_rotated_24mp, 201),  # a phone photo held sideways: must never be refused
    "webp_8mp": (_webp_8mp, 201),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_memory_of_hostile_images_in_a_subprocess(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    build, status = IMAGES[name]
    path.write_bytes(build())
    assert path.stat().st_size <= 10 * MB, "an upload the form would accept"
    run = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    estimate = result.pop("estimate")
    print(name, estimate and estimate // MB, {k: (v["peak"] // MB, v["after"] // MB) for k, v in result.items()})
    assert result["single"]["statuses"] == [status] and result["concurrent"]["statuses"] == [status] * 3
    if estimate is not None:  # the header-based estimate is what one upload really takes
        assert result["single"]["peak"] < estimate + 16 * MB, (estimate // MB, result["single"]["peak"] // MB)
    for label, measured in result.items():
        assert measured["peak"] < PEAK_BUDGET, (label, measured["peak"] // MB)
        assert measured["after"] < RETAINED_BUDGET, (label, measured["after"] // MB)
