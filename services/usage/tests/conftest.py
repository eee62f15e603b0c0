from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # usage_support beside this file

from usage_support import Suite, suite_for


@pytest.fixture(scope="session")
async def suite(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Suite]:
    async with suite_for("usage", tmp_path_factory.mktemp("usage")) as suite:
        yield suite
