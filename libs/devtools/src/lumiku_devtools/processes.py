"""The suite as real processes on free ports, started with `uvicorn_command` exactly as `make dev` starts it:
what a client's raw bytes meet (uvicorn's parser, the middleware, the gateway, the services) is what runs in
production, which an in-process ASGI client cannot show."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lumiku_avatars.settings import AvatarsSettings
from lumiku_common.db import ensure_database
from lumiku_common.settings import ServiceSettings
from lumiku_credits.handlers import QUEUE as CREDITS_QUEUE
from lumiku_credits.settings import CreditsSettings
from lumiku_devtools.suite import GATEWAY, SERVICES, uvicorn_command
from lumiku_devtools.testing import delete_queues, eventually, free_port, settings_for_tests, truncate_all
from lumiku_gateway.settings import GatewaySettings
from lumiku_generation.handlers import JOBS_QUEUE, PROJECTS_QUEUE
from lumiku_generation.settings import GenerationSettings
from lumiku_projects.settings import ProjectsSettings
from lumiku_usage.handlers import AVATAR_EVENTS, AVATAR_USED
from lumiku_usage.settings import UsageSettings

SETTINGS: dict[str, type[ServiceSettings]] = {
    "projects": ProjectsSettings,
    "avatars": AvatarsSettings,
    "credits": CreditsSettings,
    "usage": UsageSettings,
    "generation": GenerationSettings,
}
QUEUES = {
    "avatars": ("avatars.project-events", "avatars.usage-events"),
    "credits": (CREDITS_QUEUE,),
    "usage": (AVATAR_EVENTS, AVATAR_USED),
    "generation": (JOBS_QUEUE, PROJECTS_QUEUE),
}


class Process:
    log: Path | None = None  # where the process's output is appended (each start); discarded when None
    respawn = False  # wait_ready starts the process again when it died (an orchestrator's restart policy)
    starts = 0

    def __init__(self, command: list[str], port: int, env: dict[str, str]):
        self.command, self.port, self.env = command, port, env
        self.proc: subprocess.Popen[bytes] | None = None
        self._extra_env: dict[str, str] = {}

    @classmethod
    def uvicorn(cls, factory: str, port: int, env: dict[str, str]) -> Process:
        return cls(uvicorn_command(factory, port), port, env)

    def start(self, **extra_env: str) -> None:
        self.starts += 1
        self._extra_env = extra_env
        with contextlib.ExitStack() as stack:
            output = stack.enter_context(self.log.open("ab")) if self.log else subprocess.DEVNULL
            self.proc = subprocess.Popen(
                self.command, env={**os.environ, **self.env, **extra_env}, stdout=output, stderr=output
            )

    def stop(self) -> None:
        """SIGKILL: nothing of the process's own shutdown runs, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mib(self) -> float:
        """Resident memory of the process (Linux), in MiB."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return kib / 1024

    async def wait_ready(self, timeout: float = 60) -> None:
        async def ready() -> bool:
            if self.respawn and not self.alive:
                self.start(**self._extra_env)
                return False
            try:
                return (await client.get(f"http://127.0.0.1:{self.port}/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        async with httpx.AsyncClient() as client:
            await eventually(ready, timeout, 0.2, f"port {self.port} ready")


@dataclass
class RealSuite:
    gateway: Process
    services: dict[str, Process]
    settings: dict[str, ServiceSettings] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    workers: list[Process] = field(default_factory=list)
    log_dir: Path | None = None  # each process's output in <name>.log there, when given
    respawn: bool = False

    @property
    def processes(self) -> list[Process]:
        return [*self.services.values(), self.gateway]

    def worker(self, name: str) -> Process:
        """`python -m lumiku_common.worker NAME` with the service's environment (not started); stopped with the
        suite."""
        port = free_port()
        command = [sys.executable, "-m", "lumiku_common.worker", name, "--host", "127.0.0.1", "--port", str(port)]
        process = Process(command, port, {**self.envs[name], "RUN_WORKERS": "true"})
        if self.log_dir:
            process.log = self.log_dir / f"{name}-worker-{len(self.workers)}.log"
        process.respawn = self.respawn
        self.workers.append(process)
        return process


def _env(settings: ServiceSettings) -> dict[str, str]:
    return {
        "ENVIRONMENT": "test",
        "LOG_LEVEL": "WARNING",
        "DATABASE_NAME": settings.database_name,
        "QUEUE_PREFIX": settings.queue_prefix,
        "EVENTS_EXCHANGE": settings.events_exchange,
        "OUTBOX_POLL_SECONDS": "0.05",
        "DB_POOL_SIZE": str(settings.db_pool_size),
    }


@contextlib.asynccontextmanager
async def real_suite(
    names: tuple[str, ...],
    namespace: str,
    service_env: dict[str, dict[str, str]] | None = None,
    log_dir: Path | None = None,
    ready_timeout: float = 60,
    respawn: bool = False,
    **gateway_env: str,
) -> AsyncIterator[RealSuite]:
    """Starts the named services and a gateway in front of them; each migrates its own test database.
    `service_env` adds environment variables to one service's processes (its workers' too); with `log_dir`,
    each process's output goes to a file there instead of nowhere; `ready_timeout` bounds the start-up (a busy
    machine starting many processes at once needs more); with `respawn`, a process that dies (e.g. its
    migration found no free database connection) is started again, as an orchestrator would."""
    factories = {s.name: s.factory for s in SERVICES}
    ports = {name: free_port() for name in names}
    urls = json.dumps({name: f"http://127.0.0.1:{port}" for name, port in ports.items()})
    settings = {name: settings_for_tests(SETTINGS[name], namespace) for name in names}
    gateway_settings = settings_for_tests(GatewaySettings, namespace)
    with tempfile.TemporaryDirectory() as storage:
        common = {"SERVICE_URLS": urls, "STORAGE_PATH": storage, "RATE_LIMIT_ENABLED": "false"}
        envs = {n: {**_env(settings[n]), **common, **(service_env or {}).get(n, {})} for n in names}
        services = {n: Process.uvicorn(factories[n], ports[n], envs[n]) for n in names}
        gateway = Process.uvicorn(GATEWAY.factory, free_port(), {**_env(gateway_settings), **common, **gateway_env})
        suite = RealSuite(
            gateway, services, {**settings, "gateway": gateway_settings}, envs, log_dir=log_dir, respawn=respawn
        )
        for name, process in [*services.items(), ("gateway", gateway)]:
            process.log, process.respawn = log_dir / f"{name}.log" if log_dir else None, respawn
        for name in names:  # from empty databases: an earlier run killed midway may have left work in them
            await ensure_database(settings[name].database_url)
            await truncate_all(settings[name].database_url)
        try:
            for process in suite.processes:
                process.start()
            await asyncio.gather(*(p.wait_ready(ready_timeout) for p in suite.processes))
            yield suite
        finally:
            for process in [*suite.processes, *suite.workers]:
                process.stop()
            for name in names:
                await delete_queues(settings[name], *QUEUES.get(name, ()))


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def json(self) -> object:
        return json.loads(self.body)


async def exchange(port: int, request: bytes, timeout: float = 15) -> RawResponse:
    """Sends `request` byte for byte over a new connection and reads one response (httpx would normalise
    much of what the quirk tests send)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, request.startswith(b"HEAD ")), timeout)
    except (asyncio.IncompleteReadError, ValueError) as exc:
        # A head that promised a body and then broke off: the server failed after it started answering.
        raise AssertionError(f"response cut off: {exc!r}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> RawResponse:
    """The next final response on a connection (interim ones are skipped)."""
    while (response := await _read_response(reader, head_only)).status < 200:
        pass  # an interim answer (100 Continue): the final one follows
    return response


async def _read_response(reader: asyncio.StreamReader, head_only: bool) -> RawResponse:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in head[1:] if line)]
    values = dict(headers)
    if head_only or status in (204, 304) or status < 200:
        body = b""
    elif "content-length" in values:
        body = await reader.readexactly(int(values["content-length"]))
    elif values.get("transfer-encoding") == "chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.read()
    return RawResponse(status, headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while size := int((await reader.readline()).split(b";")[0], 16):
        body += await reader.readexactly(size)
        await reader.readline()
    await reader.readline()
    return body
