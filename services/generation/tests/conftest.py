"""Fixtures of the generation tests; the helpers are in generation_support.py."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from generation_support import Suite, all_settings, prepare, suite_for

from lumiku_devtools.fake_hf import FakeHuggingFace, serving


@pytest.fixture(scope="session")
async def fake_hf() -> AsyncIterator[tuple[FakeHuggingFace, str]]:
    fake = FakeHuggingFace()
    async with serving(fake) as url:
        yield fake, url


@pytest.fixture(scope="session")
async def suite(tmp_path_factory: pytest.TempPathFactory, fake_hf: tuple[FakeHuggingFace, str]) -> AsyncIterator[Suite]:
    fake, url = fake_hf
    settings = all_settings("generation", tmp_path_factory.mktemp("gen"), url)
    await prepare(settings)
    async with suite_for(settings, fake) as suite:
        yield suite


@pytest.fixture(autouse=True)
def fresh_provider(request: pytest.FixtureRequest) -> None:
    """Each test scripts the stand-in's answers for its own calls."""
    if "suite" in request.fixturenames:
        fake: tuple[FakeHuggingFace, str] = request.getfixturevalue("fake_hf")
        fake[0].reset()
