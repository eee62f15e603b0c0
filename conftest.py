"""Test tiers: a test under a `unit/` folder is in the fast tier (`make test-unit`, `pytest -m unit`): no
PostgreSQL, RabbitMQ, Redis or network, seconds in all. Everything else runs against the real servers, taken
from the environment, the local development servers or, with Docker, containers started for the run
(lumiku_devtools.infra_selection); with none of them the server tests are skipped, saying why.
Any test fails if a service logged an unhandled error meanwhile (the no_unhandled_errors fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator

import pytest

from lumiku_common.middleware import LOGGER_NAME as MIDDLEWARE_LOGGER
from lumiku_devtools import infra_selection

CONTAINERS = pytest.StashKey[contextlib.ExitStack]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: fast tier, needs no server (any test under a unit/ folder)")
    config.addinivalue_line("markers", "unhandled_errors: the test provokes an unhandled error (500) on purpose")
    config.addinivalue_line("markers", "system: the whole suite under load and faults (minutes; make system-test)")
    unit_only = config.option.markexpr == "unit"
    if os.environ.get("PYTEST_XDIST_WORKER") is None and not unit_only:  # once: xdist workers inherit the URLs
        choices = infra_selection.probe()
        if any(c.source == "container" for c in choices):
            stack = contextlib.ExitStack()
            stack.enter_context(infra_selection.start_containers(choices))
            config.stash[CONTAINERS] = stack
        _remove_stale_test_queues()


def _remove_stale_test_queues() -> None:
    from lumiku_common.settings import ServiceSettings
    from lumiku_devtools.testing import remove_stale_test_queues

    amqp_url = os.environ.get("AMQP_URL", ServiceSettings.model_fields["amqp_url"].default)
    with contextlib.suppress(Exception):  # hygiene only: a broker that cannot be tidied still runs the tests
        asyncio.run(remove_stale_test_queues(amqp_url))


def pytest_unconfigure(config: pytest.Config) -> None:
    if CONTAINERS in config.stash:
        config.stash[CONTAINERS].close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "unit" in item.path.parent.parts:
            item.add_marker(pytest.mark.unit)
    servers = [item for item in items if item.get_closest_marker("unit") is None]
    reason = servers and infra_selection.skip_reason(infra_selection.probe())
    for item in servers if reason else []:
        item.add_marker(pytest.mark.skip(reason=f"no test servers: {reason}"))


class _UnhandledErrors(logging.Handler):
    """Collects the `unhandled_error` lines the request middleware logs (every 500 that is our bug)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = record.msg if isinstance(record.msg, dict) else {}
        if event.get("event") == "unhandled_error":
            self.seen.append(f"{event.get('method')} {event.get('path')}")


@pytest.fixture(autouse=True)
def no_unhandled_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test fails if any service answered a request with an unhandled error while it ran, even when the test's
    own assertions were satisfied; tests that provoke one on purpose say so with @pytest.mark.unhandled_errors."""
    collector = _UnhandledErrors()
    logger = logging.getLogger(MIDDLEWARE_LOGGER)  # its own handler: services reset the root's at start-up
    logger.addHandler(collector)
    try:
        yield
    finally:
        logger.removeHandler(collector)
    if collector.seen and request.node.get_closest_marker("unhandled_errors") is None:
        pytest.fail(f"unhandled errors were logged: {collector.seen}", pytrace=False)
