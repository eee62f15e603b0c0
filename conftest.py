"""Test tiers: a test under a `unit/` folder is in the fast tier (`make test-unit`, `pytest -m unit`): no
PostgreSQL, RabbitMQ, Redis or network, seconds in all. Everything else runs against the real servers."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: fast tier, needs no server (any test under a unit/ folder)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "unit" in item.path.parent.parts:
            item.add_marker(pytest.mark.unit)
