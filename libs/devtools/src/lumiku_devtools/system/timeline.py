"""What the harness saw and what the chaos schedule did, on one clock (time.monotonic()), and the rule that
ties them: a 5xx (or no answer) is only acceptable while something was down, and then only 502/503/504."""

from __future__ import annotations

from dataclasses import dataclass, field

GATEWAY_STATUSES = frozenset({502, 503, 504})  # what a service that is down or cut off may answer


@dataclass(frozen=True)
class Exchange:
    """One HTTP request through the gateway: when it was sent and answered, and the status (None: no answer)."""

    started: float
    ended: float
    method: str
    route: str  # the route template, e.g. "GET /projects/{id}": ids would make every line unique
    status: int | None
    error: str = ""


@dataclass(frozen=True)
class Window:
    """A fault: from when it was injected until the target was back (process ready, link restored)."""

    kind: str  # "kill", "cut", "provider"
    target: str  # e.g. "avatars-api", "postgres", "provider:loading"
    start: float
    end: float

    def covers(self, started: float, ended: float, grace: float) -> bool:
        return started <= self.end + grace and ended >= self.start


@dataclass
class Verdict:
    server_errors: int = 0  # 5xx answers and requests without an answer
    explained: int = 0
    unexplained: list[Exchange] = field(default_factory=list)  # during no fault, or a status never allowed

    @property
    def ok(self) -> bool:
        return not self.unexplained


def classify(exchanges: list[Exchange], windows: list[Window], grace: float) -> Verdict:
    """Every 5xx must be 502/503/504 and overlap a fault window (extended by `grace` seconds after the target
    came back: pools reconnect, retries back off). A request that got no answer at all must overlap a window
    of the gateway itself (the only process the client talks to)."""
    verdict = Verdict()
    gateway = [w for w in windows if w.target.startswith("gateway")]
    for exchange in exchanges:
        if exchange.status is not None and exchange.status < 500:
            continue
        verdict.server_errors += 1
        if exchange.status is None:
            allowed = any(w.covers(exchange.started, exchange.ended, grace) for w in gateway)
        else:
            allowed = exchange.status in GATEWAY_STATUSES and any(
                w.covers(exchange.started, exchange.ended, grace) for w in windows
            )
        if allowed:
            verdict.explained += 1
        else:
            verdict.unexplained.append(exchange)
    return verdict
