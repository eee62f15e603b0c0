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
    Rule("upload-avatar", frozenset({"POST"}), re.compile(rf"^{APP}/projects/[^/]+/avatars$")),
    Rule("generate-avatar", frozenset({"POST"}), re.compile(rf"^{APP}/projects/[^/]+/avatars/generate$")),
)


def parse_limit(spec: str) -> tuple[int, int]:
    """'100/60' → (100 requests, 60-second window)."""
    count, _, window = spec.partition("/")
    return int(count), int(window)


class RateLimiter:
    def __init__(self, redis: Redis, limits: dict[str, str]):
        self.redis = redis
        self.limits = {name: parse_limit(spec) for name, spec in limits.items()}

    async def check(self, user_id: str, method: str, path: str) -> None:
        """Counts the request against every rule it matches; raises RateLimited when one is exceeded."""
        now = time.time()
        for rule in RULES:
            if rule.name not in self.limits or method not in rule.methods or not rule.pattern.match(path):
                continue
            limit, window = self.limits[rule.name]
            window_start = int(now // window * window)
            count = await self._increment(f"ratelimit:{rule.name}:{user_id}:{window_start}", window)
            if count is not None and count > limit:
                raise RateLimited(retry_after=max(1, int(window_start + window - now + 0.999)))

    async def _increment(self, key: str, window: int) -> int | None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, window + 1, nx=True)
                count, _ = await pipe.execute()
            return int(count)
        except (RedisError, OSError) as exc:
            log.warning("rate_limit_unavailable", error=repr(exc))
            return None
