"""Which failures are outages (a dependency down: wait and retry) rather than bugs: consumers ride them out in
place, and generation leaves such a run to its sweeper, so an outage of a few seconds dead-letters nothing."""

from __future__ import annotations

import pytest

from lumiku_common.errors import is_outage
from lumiku_common.internal import UpstreamUnavailable


@pytest.mark.parametrize(
    "exc",
    [
        UpstreamUnavailable(),
        ConnectionResetError(104, "Connection reset by peer"),
        ExceptionGroup("images", [UpstreamUnavailable(), UpstreamUnavailable()]),
        ExceptionGroup("images", [ExceptionGroup("nested", [TimeoutError()]), UpstreamUnavailable()]),
    ],
)
def test_outages(exc: BaseException) -> None:
    assert is_outage(exc)


@pytest.mark.parametrize(
    "exc",
    [ValueError("a bug"), ExceptionGroup("images", [UpstreamUnavailable(), KeyError("a bug")])],
)
def test_anything_else_is_not_an_outage(exc: BaseException) -> None:
    assert not is_outage(exc)
