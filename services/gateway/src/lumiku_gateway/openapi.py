"""The suite's OpenAPI document: every routed service's public paths, merged, served at /docs."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from lumiku_gateway.composition import declare_composed_schema
from lumiku_gateway.upstreams import Upstreams

_CACHE_SECONDS = 60.0
_REF = "#/components/schemas/"


class SuiteOpenAPI:
    def __init__(self, upstreams: Upstreams, title: str, version: str):
        self.upstreams, self.title, self.version = upstreams, title, version
        self._cached: tuple[float, dict[str, Any]] | None = None

    async def document(self) -> dict[str, Any]:
        if self._cached and time.monotonic() - self._cached[0] < _CACHE_SECONDS:
            return self._cached[1]
        names = list(self.upstreams.clients)
        specs = await asyncio.gather(*(self._fetch(n) for n in names))
        doc = self._merge(dict(zip(names, specs, strict=True)))
        self._cached = (time.monotonic(), doc)
        return doc

    async def _fetch(self, service: str) -> dict[str, Any] | None:
        try:
            response = await self.upstreams.clients[service].get("/openapi.json", timeout=3.0)
            response.raise_for_status()
            spec: dict[str, Any] = response.json()
            return spec
        except (httpx.HTTPError, ValueError):
            return None

    def _merge(self, specs: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        schemas: dict[str, Any] = {}
        for spec in _without_clashes({n: s for n, s in specs.items() if s is not None}).values():
            paths.update({p: item for p, item in spec.get("paths", {}).items() if p.startswith("/api/")})
            schemas.update(spec.get("components", {}).get("schemas", {}))
        declare_composed_schema(schemas)
        return {
            "openapi": "3.1.0",
            "info": {
                "title": self.title,
                "version": self.version,
                "description": "Every public endpoint of the suite, as routed by the gateway. "
                + "Unavailable services: "
                + (", ".join(n for n, s in specs.items() if s is None) or "none"),
            },
            "paths": dict(sorted(paths.items())),
            "components": {
                "schemas": schemas,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            },
            "security": [{"bearer": []}],
        }


def _without_clashes(specs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services' specs whose schema names can share one `components.schemas`. A name that two services define
    differently (each has its own `DeletedResponse`, say) is renamed in each of them to `<Service><Name>`,
    references included, so neither definition silently replaces the other. Identical ones stay shared."""
    definitions: dict[str, set[str]] = {}
    for spec in specs.values():
        for name, schema in spec.get("components", {}).get("schemas", {}).items():
            definitions.setdefault(name, set()).add(json.dumps(schema, sort_keys=True))
    clashes = {name for name, found in definitions.items() if len(found) > 1}
    if not clashes:
        return specs
    renamed: dict[str, dict[str, Any]] = {}
    for service, spec in specs.items():
        prefix = service.title().replace("-", "").replace("_", "")
        names = {n: f"{prefix}{n}" for n in spec.get("components", {}).get("schemas", {}) if n in clashes}
        text = json.dumps(spec)
        for old, new in names.items():
            text = text.replace(json.dumps(_REF + old), json.dumps(_REF + new))
        copy: dict[str, Any] = json.loads(text)
        schemas = copy.get("components", {}).get("schemas", {})
        copy.setdefault("components", {})["schemas"] = {names.get(n, n): s for n, s in schemas.items()}
        renamed[service] = copy
    return renamed
