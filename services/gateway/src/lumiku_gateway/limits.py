"""Per-user rate limits shared by every gateway replica: fixed windows counted in Redis.

If Redis is unreachable the gateway lets requests through (and logs it): limits protect the suite, they
must not take it down.

Every request is counted in Redis before it passes, so no replica can let a window go past its limit. What is
saved is the round trip per request, two ways:
- **Batches.** One script call is in flight at a time per process; the requests that check in the same turn of
  the event loop, or while a call is in flight, are counted together by the next, in arrival order.
- **Grants.** Far from a limit, the call that counts a request also counts ahead a few more (an eighth of what
  is left of the window, at most 32) and hands them to this process, whose next requests in that window pass
  without a call. Close to the limit the grants shrink to none, so the last requests of a window are counted
  one by one. One process is exact: it only asks when it has used its grant, so Redis holds the true count.
  Several replicas never pass more than the limit; a replica can be refused while another still holds
  unused grants, by at most an eighth of the window's remainder when they were granted.
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


GRANT_MAX, GRANT_SHARE = 32, 8  # counted ahead: at most 32, and an eighth of what the window has left

# One round trip for a batch: each key counted once for all its requests; a new window's clock started; a grant.
_COUNT = f"""
local out = {{}}
for i, key in ipairs(KEYS) do
  local requests, limit = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i])
  local n = redis.call('INCRBY', key, requests)
  if n == requests then redis.call('EXPIRE', key, ARGV[3 * i - 1]) end
  local grant = 0
  if n < limit then grant = math.min({GRANT_MAX}, math.floor((limit - n) / {GRANT_SHARE})) end
  if grant > 0 then redis.call('INCRBY', key, grant) end
  out[2 * i - 1], out[2 * i] = n, grant
end
return out
"""


@dataclass(frozen=True, slots=True)
class Window:
    key: str  # ratelimit:<rule>:<user>:<window start>
    limit: int
    seconds: int
    ends: float


_Waiting = tuple[list[Window], "asyncio.Future[list[int]]"]


class _Counter:
    """Counts windows in Redis, in batches, and keeps the requests granted ahead (see the module's docstring)."""

    SWEEP_SECONDS = 10.0

    def __init__(self, redis: Redis):
        self._script = redis.register_script(_COUNT)
        self._waiting: list[_Waiting] = []
        self._drainer: asyncio.Future[None] | None = None  # the task making the calls, while there is one
        self._granted: dict[str, tuple[int, float]] = {}  # key -> (requests counted ahead, when its window ends)
        self._next_sweep = 0.0

    async def count(self, windows: list[Window]) -> list[int]:
        """Each window's count with this request in it; 0 for a window this process had been granted ahead."""
        asked = [w for w in windows if not self._take(w.key)]
        if not asked:
            return [0] * len(windows)
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._waiting.append((asked, future))
        if self._drainer is None:
            # Its own task (this request may be cancelled), which first runs once every request read in the
            # same turn of the loop has checked in: they go in one call.
            self._drainer = asyncio.ensure_future(self._drain())
        counted = dict(zip((w.key for w in asked), await future, strict=True))
        return [counted.get(w.key, 0) for w in windows]

    def _take(self, key: str) -> bool:
        held = self._granted.get(key)
        if held is None:
            return False
        left, ends = held
        if left > 1:
            self._granted[key] = (left - 1, ends)
        else:
            del self._granted[key]
        return True

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await self._call(batch)
                except Exception as exc:  # Redis's, or a bug: each waiter gets it, none waits forever
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
        finally:
            self._drainer = None

    async def _call(self, batch: list[_Waiting]) -> None:
        needed: dict[str, tuple[Window, int]] = {}
        for windows, _ in batch:
            for w in windows:
                needed[w.key] = (w, needed.get(w.key, (w, 0))[1] + 1)
        args = [arg for w, requests in needed.values() for arg in (requests, w.seconds + 1, w.limit)]
        counted: list[Any] = await self._script(keys=list(needed), args=args)
        first: dict[str, int] = {}  # the count of each key's first request in this batch
        for (w, requests), n, grant in zip(needed.values(), counted[::2], counted[1::2], strict=True):
            first[w.key] = int(n) - requests + 1
            if int(grant):
                self._grant(w, int(grant))
        for windows, future in batch:
            counts = [first[w.key] for w in windows]
            for w in windows:
                first[w.key] += 1
            if not future.done():  # a waiter whose request was cancelled meanwhile
                future.set_result(counts)

    def _grant(self, window: Window, requests: int) -> None:
        left, _ = self._granted.get(window.key, (0, window.ends))
        self._granted[window.key] = (left + requests, window.ends)
        now = time.time()
        if now >= self._next_sweep:  # grants of windows gone are worth nothing: bounded by the live ones
            self._granted = {key: held for key, held in self._granted.items() if held[1] > now}
            self._next_sweep = now + self.SWEEP_SECONDS


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
            Window(f"ratelimit:{rule.name}:{user_id}:{int(start)}", limit, seconds, start + seconds)
            for rule in RULES
            if rule.name in self.limits and method in rule.methods and rule.pattern.match(path)
            for limit, seconds in (self.limits[rule.name],)
            for start in (now // seconds * seconds,)
        ]
        if not windows:
            return
        try:
            counts = await self._count(windows)
        except (RedisError, OSError) as exc:
            log.warning("rate_limit_unavailable", error=repr(exc))
            return
        exceeded = [w for w, n in zip(windows, counts, strict=True) if n > w.limit]
        if exceeded:  # allowed again once every exceeded window has reset
            for w in exceeded:
                RATE_LIMITED.labels(w.key.split(":")[1]).inc()  # the rule name, from its key
            raise RateLimited(retry_after=max(1, int(max(w.ends for w in exceeded) - now + 0.999)))
