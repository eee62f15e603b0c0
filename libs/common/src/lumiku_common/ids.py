"""Opaque, time-ordered, collision-free identifiers (ULID-like, lowercase Crockford base32)."""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id() -> str:
    """26 characters: 48-bit millisecond time + 80 random bits, so ids sort by creation time."""
    return _encode(time.time_ns() // 1_000_000, 10) + _encode(secrets.randbits(80), 16)
