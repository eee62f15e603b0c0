"""The system test (`make system-test` runs the same with its report): the whole suite as real processes under
load while processes are SIGKILLed, PostgreSQL and RabbitMQ links cut and the provider fails in bursts; then every
invariant holds. Marked `system` (minutes, not seconds): `make test` leaves it out, `pytest -m system` runs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lumiku_devtools.system.run import Config, render, run, write


@pytest.mark.system
async def test_the_suite_keeps_its_invariants_under_load_and_faults(tmp_path: Path) -> None:
    config = Config(load_seconds=float(os.environ.get("SYSTEM_LOAD_SECONDS", "45")), report_dir=tmp_path)
    report = await run(config)
    print(render(report), f"report: {write(report, tmp_path)}", sep="\n")  # shown with -s
    assert report.ok, render(report)
