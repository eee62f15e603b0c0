"""A deterministic PNG drawn from a text and a seed, without an imaging library: the placeholder provider's
images (development, offline) and the provider stand-in's of tests and benchmarks."""

from __future__ import annotations

import hashlib
import struct
import zlib

_BANDS = 32


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def draw_png(text: str, seed: int, width: int = 256, height: int = 256) -> bytes:
    """Horizontal gradients in colours taken from sha256(text, seed), in bands: the same inputs give the same
    bytes, different seeds visibly different images."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    rows = []
    for band in range(_BANDS):
        r0, g0, b0 = digest[band % 32], digest[(band + 7) % 32], digest[(band + 13) % 32]
        line = bytearray(b"\x00")  # filter type: none
        for x in range(width):
            t = x * 255 // max(1, width - 1)
            line += bytes(((r0 + t) & 0xFF, (g0 + t // 2) & 0xFF, (b0 + 255 - t) & 0xFF))
        rows.append(bytes(line))
    raw = b"".join(rows[y * _BANDS // height] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")
    )
