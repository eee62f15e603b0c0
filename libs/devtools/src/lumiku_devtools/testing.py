"""Test support shared by every service's tests: isolated databases and broker names on the real local
PostgreSQL and RabbitMQ, in-process service clients, tokens, an event spy and a cuttable TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import aio_pika
import httpx
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from lumiku_common.auth import Role, mint_user_token
from lumiku_common.migrations import upgrade
from lumiku_common.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")

# One id per test run (and xdist worker): queue and exchange names never collide with `make dev` or other runs.
RUN_ID = f"{os.getpid()}-{secrets.token_hex(3)}"
# Databases are per xdist worker; TEST_DB_TAG separates concurrent runs on one machine (e.g. two developers).
WORKER = os.environ.get("TEST_DB_TAG", "") + os.environ.get("PYTEST_XDIST_WORKER", "gw0")


TEST_DB_POOL_SIZE = 2


def settings_for_tests(cls: type[S], namespace: str = "", **overrides: Any) -> S:
    """Settings on isolated databases, queues and exchange. Services started together for one fixture share
    a `namespace`; apps that stay up for a whole session need their own, or their relays and consumers
    would take rows and messages that belong to other tests in the same worker."""
    base = cls()
    # A database name given here is a base name too: the per-worker suffix keeps workers apart.
    base_name = overrides.pop("database_name", None) or base.database_name or base.service_name
    ns = f"_{namespace}" if namespace else ""
    values: dict[str, Any] = {
        "environment": "test",
        "database_name": f"{base_name}{ns}_test_{WORKER}",
        "queue_prefix": f"test.{RUN_ID}.{namespace + '.' if namespace else ''}",
        "events_exchange": f"lumiku.events.test.{RUN_ID}{ns}",
        "outbox_poll_seconds": 0.05,
        "log_level": "WARNING",
        # Up to 2 x this many connections per engine, kept open: dozens of apps and processes live at once in a
        # test session, and CI's PostgreSQL allows 100 connections in all.
        "db_pool_size": TEST_DB_POOL_SIZE,
        # An app's shutdown waits this long for messages in flight (one may be riding out an outage the test
        # made): well inside the 30 s a test gives an app to stop. Drain tests set their own.
        "consumer_drain_seconds": 1.0,
    }
    values.update(overrides)
    return cls(**values)


async def prepare_database(settings: ServiceSettings, migrations: Path) -> None:
    """Migrates the test database to head and empties every table (but alembic's)."""
    await upgrade(migrations, settings.database_url)
    await truncate_all(settings.database_url)


async def truncate_all(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            tables = (
                await conn.execute(
                    text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                    )
                )
            ).scalars()
            names = ", ".join(f'"{t}"' for t in tables)
            if names:
                await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


def lifespan_of(app: FastAPI) -> LifespanManager:
    """Runs the app's lifespan (workers included). A service's shutdown is bounded at about 20 s (consumers
    drain, loops stop, the broker closes); asgi-lifespan's default of 5 s gives up first on a busy machine and
    leaves the app's relay running into the next test, publishing rows that are not its own."""
    return LifespanManager(app, startup_timeout=60, shutdown_timeout=30)


@contextlib.asynccontextmanager
async def running(app: FastAPI, base_url: str = "http://test") -> AsyncIterator[httpx.AsyncClient]:
    """Runs the app's lifespan (workers included) and yields an HTTP client wired to it in-process."""
    async with lifespan_of(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=30) as client:
            yield client


async def workers_started(app: FastAPI, timeout: float = 30) -> None:
    """Waits until the app's consumers are bound, so events published from now on reach them."""
    await asyncio.wait_for(app.state.workers.consumers_started.wait(), timeout)


async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout: float = 15.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Polls `check` until it returns something truthy, and returns that. A check may also assert: an
    AssertionError counts as "not yet", and the last one is re-raised at the deadline, so a failure says why."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            if result := await check():
                return result
            failure: AssertionError = AssertionError(f"{what} never held within {timeout} s")
        except AssertionError as exc:
            failure = exc
        if loop.time() >= deadline:
            raise failure
        await asyncio.sleep(interval)


class HeldFirstCall:
    """`target.name`'s next call, once it has returned, waits for `go` before handing its result back; the
    calls after it pass. `reached` is set when the held call got its result: the moment to act in between."""

    def __init__(self, target: Any, name: str, monkeypatch: Any):
        self.reached, self.go = asyncio.Event(), asyncio.Event()
        call = getattr(target, name)

        async def held(*args: Any, **kwargs: Any) -> Any:
            first = not self.reached.is_set()
            result = await call(*args, **kwargs)
            if first:
                self.reached.set()
                await asyncio.wait_for(self.go.wait(), 20)
            return result

        monkeypatch.setattr(target, name, held)


def token_for(settings: ServiceSettings, user_id: str, role: Role = "user", email: str | None = None) -> str:
    return mint_user_token(settings.jwt_secret, user_id, email or f"{user_id}@example.com", role)


def auth(settings: ServiceSettings, user_id: str, role: Role = "user") -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(settings, user_id, role)}"}


async def delete_queues(settings: ServiceSettings, *names: str) -> None:
    """Removes the queues (and their .dlq) a test run declared, and the run's exchange."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in names:
            for queue in (f"{settings.queue_prefix}{name}", f"{settings.queue_prefix}{name}.dlq"):
                with contextlib.suppress(Exception):
                    await channel.queue_delete(queue)
                    channel = await connection.channel()
        with contextlib.suppress(Exception):
            await channel.exchange_delete(settings.events_exchange)


# A test run's queues are named `test.<pid>-<hex>.…` (RUN_ID).
_RUN_QUEUE = re.compile(r"^test\.(\d+)-[0-9a-f]{6}\.")


def stale_test_queues(names: Iterable[str]) -> list[str]:
    """The queues of test runs whose process is gone: a run killed before its teardown, or a queue a suite did
    not delete. Quorum queues left behind add up over runs until the broker stops answering."""
    return [name for name in names if (found := _RUN_QUEUE.match(name)) and not _alive(int(found[1]))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def remove_stale_test_queues(amqp_url: str) -> int:
    """Deletes `stale_test_queues` of a broker on this machine (AMQP cannot list queues: rabbitmqctl does);
    nothing elsewhere or without rabbitmqctl. Returns how many went."""
    if shutil.which("rabbitmqctl") is None or urlsplit(amqp_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        return 0
    command = ["rabbitmqctl", "-q", "list_queues", "name", "--no-table-headers"]
    try:
        listed = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return 0
    stale = stale_test_queues(listed.stdout.split()) if listed.returncode == 0 else []
    if stale:
        async with await aio_pika.connect(amqp_url) as connection:
            channel = await connection.channel()
            for name in stale:
                try:
                    await channel.queue_delete(name)
                except aio_pika.exceptions.AMQPError:
                    channel = await connection.channel()  # a failed delete closes the channel
    return len(stale)


@contextlib.asynccontextmanager
async def served(
    app: Any, port: int = 0, lifespan: Literal["on", "off"] = "on", startup_timeout: float = 30
) -> AsyncIterator[str]:
    """Serves the ASGI app over real TCP on 127.0.0.1, on this event loop, for clients that are separate
    processes or need real sockets and timeouts; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan))
    task = asyncio.create_task(server.serve())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + startup_timeout
        while not (server.started or task.done()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if not server.started:
            raise RuntimeError(f"the app never started serving on port {port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """The tests' S3 endpoint URL (keys: `infra_selection.s3_keys()`): TEST_S3_ENDPOINT_URL when set (a MinIO
    container started for the run sets it, see lumiku_devtools.infra_selection), else a real S3-protocol
    server in this process (moto's server mode)."""
    if endpoint := os.environ.get("TEST_S3_ENDPOINT_URL"):
        yield endpoint
        return
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


class EventSpy:
    """Binds a private, auto-deleted queue to the events exchange and records every envelope."""

    def __init__(self, amqp_url: str, exchange: str, pattern: str = "#"):
        self.amqp_url, self.exchange, self.pattern = amqp_url, exchange, pattern
        self.events: list[dict[str, Any]] = []
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._arrived = asyncio.Condition()

    async def __aenter__(self) -> EventSpy:
        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, self.pattern)
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with self._arrived:
            self.events.append(json.loads(message.body))
            self._arrived.notify_all()

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]

    async def wait_for(self, event_type: str, count: int = 1, timeout: float = 15) -> list[dict[str, Any]]:
        async def enough() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.of_type(event_type)) >= count)

        await asyncio.wait_for(enough(), timeout)
        return self.of_type(event_type)


async def read_dlq(amqp_url: str, queue: str, timeout: float = 15) -> aio_pika.abc.AbstractIncomingMessage:
    """Waits for one message on `queue` (a .dlq) and returns it, acked."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        q = await channel.get_queue(queue)
        message = await eventually(lambda: q.get(fail=False), timeout, 0.1, f"a message on {queue}")
        await message.ack()
        return message


async def publish_raw(settings: ServiceSettings, routing_key: str, body: bytes, message_id: str = "") -> None:
    """Publishes bytes as-is, the way a sibling app (or a broken one) would."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(settings.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await exchange.publish(aio_pika.Message(body, message_id=message_id or None), routing_key)


class TcpProxy:
    """A TCP proxy in front of a real server whose link the test can cut and restore (a broker outage
    as the service sees it, without stopping the machine's shared RabbitMQ)."""

    def __init__(self, target_host: str, target_port: int):
        self.target_host, self.target_port = target_host, target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self.accepting = True

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url_for(self, amqp_url: str) -> str:
        return amqp_url.replace(f"{self.target_host}:{self.target_port}", f"127.0.0.1:{self.port}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        if not self.accepting:  # cut while this link was being set up: it must not outlive the cut
            up_writer.close()
            writer.close()
            return
        self._links |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._links.discard(writer)
            writer.close()

    def cut(self) -> None:
        """Drops every open link and refuses new ones."""
        self.accepting = False
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def restore(self) -> None:
        self.accepting = True

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class Metrics:
    """One scrape of a Prometheus endpoint, parsed: `metrics.value(name, **labels)` (None when absent)."""

    def __init__(self, text: str):
        from prometheus_client.parser import text_string_to_metric_families

        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def label_values(self) -> set[str]:
        return {value for _, labels in self.samples for _, value in labels}

    @classmethod
    async def scrape(cls, client: httpx.AsyncClient, url: str = "/metrics") -> Metrics:
        response = await client.get(url)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return cls(response.text)
