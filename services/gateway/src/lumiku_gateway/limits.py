"""Per-user rate limits shared by every gateway replica: fixed windows counted in Redis.

If Redis is unreachable the gateway lets requests through (and logs it): limits protect the suite, they
must not take it down.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

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


class RateLimiter:
    """Without Redis (rate limits switched off) every request passes."""

    def __init__(self, redis: Redis | None, limits: dict[str, str]):
        self.redis = redis
        self.limits = {name: parse_limit(spec) for name, spec in limits.items()}
        self._count = redis.register_script(_COUNT) if redis is not None else None

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
            counts = await self._count(keys=[w[0] for w in windows], args=[w[2] + 1 for w in windows])
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
