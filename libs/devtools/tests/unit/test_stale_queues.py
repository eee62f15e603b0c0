"""Which leftover queues a test session removes before it starts (`lumiku_devtools.testing.stale_test_queues`)."""

from __future__ import annotations

import os
import subprocess
import sys

from lumiku_devtools.testing import RUN_ID, stale_test_queues


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_queues_of_runs_whose_process_is_gone_are_stale():
    dead = _dead_pid()
    names = [
        f"test.{dead}-0a1b2c.avatars.credits.commands",
        f"test.{dead}-0a1b2c.avatars.credits.commands.dlq",
        f"test.{RUN_ID}.avatars.project-events",  # this run's own
        f"test.{os.getppid()}-abcdef.usage.avatar-used",  # a run still alive
        "avatars.project-events",  # make dev's, or production's
        f"test.{dead}-zzzzzz.not-a-run-id",
        "amq.gen-WDYQU3MA5O-Ux1h8ik9y6w",
    ]
    assert stale_test_queues(names) == names[:2]
