"""`lumiku dev`: checks the local infrastructure, migrates, and runs every service plus the gateway."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

from lumiku_common.auth import mint_user_token
from lumiku_common.settings import ServiceSettings
from lumiku_devtools.suite import GATEWAY, SERVICES, uvicorn_command


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url.replace("+asyncpg", ""))
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def check_infrastructure(settings: ServiceSettings) -> None:
    missing = [
        f"{name} at {url}"
        for name, url, port in (
            ("PostgreSQL", settings.postgres_url, 5432),
            ("RabbitMQ", settings.amqp_url, 5672),
            ("Redis", settings.redis_url, 6379),
        )
        if not _reachable(url, port)
    ]
    if missing:
        sys.exit(
            "lumiku dev: cannot reach " + "; ".join(missing) + ".\n"
            "Start them (see README: 'Infrastructure') or point POSTGRES_URL / AMQP_URL / REDIS_URL elsewhere."
        )


def _wait_ready(port: int, timeout: float = 60) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def workers(cores: int | None = None, overrides: str | None = None) -> dict[str, int]:
    """uvicorn workers per process of `lumiku dev`. One each below 4 cores: the six processes, PostgreSQL,
    RabbitMQ and Redis already share them, and a second worker only adds memory. With more cores the gateway
    (every request passes it) and projects and avatars (every composed `GET /projects`) get more.
    `DEV_WORKERS='{"gateway": 3}'` overrides."""
    cores = cores or os.cpu_count() or 1
    counts = {"gateway": max(1, cores // 4), "projects": max(1, cores // 8), "avatars": max(1, cores // 8)}
    counts.update(json.loads(overrides or "{}"))
    return counts


def run() -> None:
    settings = ServiceSettings()
    check_infrastructure(settings)
    gateway_port = int(os.environ.get("GATEWAY_PORT", GATEWAY.port))
    urls = {s.name: s.url for s in SERVICES}
    env = {**os.environ, "SERVICE_URLS": json.dumps(urls)}
    processes: list[subprocess.Popen[bytes]] = []

    counts = workers(overrides=os.environ.get("DEV_WORKERS"))

    def start(name: str, factory: str, port: int) -> None:
        options = ("--workers", str(counts[name])) if counts.get(name, 1) > 1 else ()
        processes.append(subprocess.Popen(uvicorn_command(factory, port, *options), env=env))

    for service in SERVICES:  # each migrates its own database at start-up
        start(service.name, service.factory, service.port)
    for service in SERVICES:
        if not _wait_ready(service.port):
            print(f"lumiku dev: {service.name} did not start; see its log above", file=sys.stderr)
    start(GATEWAY.name, GATEWAY.factory, gateway_port)
    _wait_ready(gateway_port)
    token = mint_user_token(settings.jwt_secret, "dev-user", "dev@example.com")
    admin = mint_user_token(settings.jwt_secret, "dev-admin", "admin@example.com", "admin")
    print(
        f"\nLumiku is up: gateway http://127.0.0.1:{gateway_port}  (docs: /docs, health: /api/health)\n"
        f"dev token (user dev-user):  {token}\n"
        f"admin token (dev-admin):    {admin}\n"
        f"try: curl -H 'Authorization: Bearer {token[:16]}...' http://127.0.0.1:{gateway_port}"
        "/api/apps/avatar-creator/projects\n",
        flush=True,
    )

    def stop(*_: object) -> None:
        for p in processes:
            p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        for p in processes:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
