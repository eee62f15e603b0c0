"""Per-user rate limits shared by every gateway replica: fixed windows counted in Redis.

If Redis is unreachable the gateway lets requests through (and logs it): limits protect the suite, they
must not take it down.

Every request is counted in Redis, exactly, so every replica sees the same counts and the 429 contract holds
across processes. What is saved is the round trip per request: one script call is in flight at a time per
process, and the requests that check in the same turn of the event loop, or while a call is in flight, are
counted together by the next (each INCR still its own, in arrival order). A lone request waits one turn of
the loop, microseconds.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from lumiku_common.errors import RateLimited
from lumiku_common.logs import get_logger
from lumiku_common.metrics import RATE_LIMITED
from lumiku_gateway.routes import APP

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    methods: frozenset[str]
    pattern: re.Pattern[str]


RULES: tuple[Rule, ...] = (
    Rule("api", frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"}), re.compile(r"^/api/")),
    Rule("create-project", frozenset({"POST"}), re.compile(rf"^{APP}/projects$")),
    # save-preview creates an avatar too: it counts against the same limit as an upload.
    Rule("upload-avatar", frozenset({"POST"}), re.compile(rf"^{APP}/projects/[^/]+/avatars(/save-preview)?$")),
    # A preview is free, so it counts against the generation limit too: it cannot be farmed for free images.
    Rule("generate-avatar", frozenset({"POST"}), re.compile(rf"^{APP}/projects/[^/]+/avatars/generate(-preview)?$")),
)


def parse_limit(spec: str) -> tuple[int, int]:
    """'100/60' → (100 requests, 60-second window)."""
    count, _, window = spec.partition("/")
    return int(count), int(window)


# One round trip per request, whatever the number of rules: count every window, start the new ones' clocks.
_COUNT = """
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('INCR', key)
  if counts[i] == 1 then redis.call('EXPIRE', key, ARGV[i]) end
end
return counts
"""


_Waiting = tuple[list[str], list[int], "asyncio.Future[list[int]]"]


class _Counter:
    """Counts windows in Redis: the requests that check in one turn of the event loop, or while a call is in
    flight, go together in the next call."""

    def __init__(self, redis: Redis):
        self._script = redis.register_script(_COUNT)
        self._waiting: list[_Waiting] = []
        self._drainer: asyncio.Future[None] | None = None  # the task making the calls, while there is one

    async def count(self, keys: list[str], expiries: list[int]) -> list[int]:
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._waiting.append((keys, expiries, future))
        if self._drainer is None:
            # Its own task (this request may be cancelled), which first runs once every request read in the
            # same turn of the loop has checked in: they go in one call.
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._call(batch)
        finally:
            self._drainer = None

    async def _call(self, batch: list[_Waiting]) -> None:
        keys = [key for waiting in batch for key in waiting[0]]
        args = [expiry for waiting in batch for expiry in waiting[1]]
        try:
            counts: list[Any] = await self._script(keys=keys, args=args)
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for waiting_keys, _, future in batch:
            if not future.done():  # a waiter whose request was cancelled meanwhile
                future.set_result([int(n) for n in counts[start : start + len(waiting_keys)]])
            start += len(waiting_keys)


class RateLimiter:
    """Without Redis (rate limits switched off) every request passes."""

    def __init__(self, redis: Redis | None, limits: dict[str, str]):
        self.redis = redis
        self.limits = {name: parse_limit(spec) for name, spec in limits.items()}
        self._count = _Counter(redis).count if redis is not None else None

    async def check(self, user_id: str, method: str, path: str) -> None:
        """Counts the request against every rule it matches; raises RateLimited when one is exceeded."""
        if self._count is None:
            return
        now = time.time()
        windows = [
            (f"ratelimit:{rule.name}:{user_id}:{int(now // window * window)}", limit, window)
            for rule in RULES
            if rule.name in self.limits and method in rule.methods and rule.pattern.match(path)
            for limit, window in (self.limits[rule.name],)
        ]
        if not windows:
            return
        try:
            counts = await self._count([w[0] for w in windows], [w[2] + 1 for w in windows])
        except (RedisError, OSError) as exc:
            log.warning("rate_limit_unavailable", error=repr(exc))
            return
        resets = [
            (now // window + 1) * window for (_, limit, window), n in zip(windows, counts, strict=True) if n > limit
        ]
        if resets:  # allowed again once every exceeded window has reset
            for (key, limit, _), n in zip(windows, counts, strict=True):
                if n > limit:
                    RATE_LIMITED.labels(key.split(":")[1]).inc()  # the rule name, from its key
            raise RateLimited(retry_after=max(1, int(max(resets) - now + 0.999)))
