"""PROMETHEUS_MULTIPROC_DIR mode: several worker processes of one service, one scrape of all their values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lumiku_common import metrics
from lumiku_devtools.testing import Metrics

WORKER = """
import sys
from lumiku_common import metrics
requests, depth = int(sys.argv[1]), int(sys.argv[2])
for _ in range(requests):
    metrics.HTTP_DURATION.labels("projects", "GET", "/projects", "200").observe(0.01)
metrics.QUEUE_DEPTH.labels("projects.events").set(depth)
"""


def run_worker(directory: Path, requests: int, depth: int) -> None:
    env = {**os.environ, metrics.MULTIPROC_ENV: str(directory)}
    subprocess.run([sys.executable, "-c", WORKER, str(requests), str(depth)], env=env, check=True, timeout=60)


def test_a_scrape_merges_every_worker_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_worker(tmp_path, requests=3, depth=5)
    run_worker(tmp_path, requests=4, depth=7)
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))

    body, content_type = metrics.exposition()
    scraped = Metrics(body.decode())

    assert content_type.startswith("text/plain")
    labels = {"service": "projects", "method": "GET", "route": "/projects", "status": "200"}
    assert scraped.value("lumiku_http_request_duration_seconds_count", **labels) == 7  # summed
    assert scraped.value("lumiku_http_request_duration_seconds_sum", **labels) == pytest.approx(0.07)
    assert scraped.value("lumiku_queue_messages", queue="projects.events") == 7  # the latest, not a sum


def test_without_the_directory_a_scrape_reads_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    metrics.QUEUE_DEPTH.labels("unit.single").set(3)
    assert Metrics(metrics.exposition()[0].decode()).value("lumiku_queue_messages", queue="unit.single") == 3
