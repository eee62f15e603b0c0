"""A job run that failed only because a dependency is down is left to the sweeper (the command is acked), so an
outage of a few seconds does not use up the command's deliveries and dead-letter a job that is fine."""

from __future__ import annotations

import pytest

from lumiku_common.internal import UpstreamUnavailable
from lumiku_generation.handlers import dependency_down


@pytest.mark.parametrize(
    "exc",
    [
        UpstreamUnavailable(),
        ConnectionResetError(104, "Connection reset by peer"),
        ExceptionGroup("images", [UpstreamUnavailable(), UpstreamUnavailable()]),
        ExceptionGroup("images", [ExceptionGroup("nested", [TimeoutError()]), UpstreamUnavailable()]),
    ],
)
def test_outages_postpone_the_run(exc: BaseException) -> None:
    assert dependency_down(exc)


@pytest.mark.parametrize(
    "exc",
    [ValueError("a bug"), ExceptionGroup("images", [UpstreamUnavailable(), KeyError("a bug")])],
)
def test_anything_else_is_retried_and_dead_lettered_as_before(exc: BaseException) -> None:
    assert not dependency_down(exc)
