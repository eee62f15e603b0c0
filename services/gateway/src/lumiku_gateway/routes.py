"""The routing table: which service owns which public path. First match wins; order is specific→general."""

from __future__ import annotations

import re
from dataclasses import dataclass

APP = "/api/apps/avatar-creator"


@dataclass(frozen=True, slots=True)
class Route:
    pattern: re.Pattern[str]
    service: str
    authenticated: bool = True
    template: str = ""  # the pattern made readable, a bounded metrics label


def _route(pattern: str, service: str, authenticated: bool = True) -> Route:
    return Route(re.compile(pattern), service, authenticated, _template(pattern))


def _template(pattern: str) -> str:
    readable = pattern.strip("^$").replace("(/.*)?", "{/rest}").replace("(/[^/]+)?", "{/id}")
    return readable.replace("[^/]+", "{id}").replace("(/save-preview)?", "{/save-preview}")


ROUTES: tuple[Route, ...] = (
    _route(rf"^{APP}/projects/[^/]+/avatars/(generate|generate-preview)$", "generation"),
    _route(rf"^{APP}/projects/[^/]+/avatars(/save-preview)?$", "avatars"),
    _route(rf"^{APP}/projects(/[^/]+)?$", "projects"),
    _route(rf"^{APP}/avatars/[^/]+/usage-history$", "usage"),
    _route(rf"^{APP}/track-usage$", "usage"),
    _route(rf"^{APP}/usage$", "usage"),
    _route(rf"^{APP}/(avatars|stats)(/[^/]+)?$", "avatars"),
    _route(rf"^{APP}/generations(/.*)?$", "generation"),
    _route(r"^/api/credits(/.*)?$", "credits"),
)


def match(path: str) -> Route | None:
    return next((route for route in ROUTES if route.pattern.match(path)), None)
