from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aio_pika
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table

from lumiku_common.db import Database, ensure_database
from lumiku_common.messaging.broker import Broker
from lumiku_common.messaging.tables import messaging_metadata
from lumiku_common.settings import ServiceSettings
from lumiku_devtools.testing import settings_for_tests, truncate_all

# A table the test handlers write their effects to, beside the outbox and inbox.
effects_metadata = MetaData()
effects = Table(
    "effects",
    effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
)


class CommonSettings(ServiceSettings):
    service_name: str = "common"
    database_name: str = "lumiku_common"


@pytest.fixture(scope="session")
def settings() -> ServiceSettings:
    return settings_for_tests(CommonSettings)


@pytest.fixture
async def db(settings: ServiceSettings) -> AsyncIterator[Database]:
    await ensure_database(settings.database_url)
    database = Database(settings.database_url, "common")
    async with database.engine.begin() as conn:
        await conn.run_sync(messaging_metadata.create_all)
        await conn.run_sync(effects_metadata.create_all)
    await truncate_all(settings.database_url)
    yield database
    await database.dispose()


@pytest.fixture
async def broker(settings: ServiceSettings) -> AsyncIterator[Broker]:
    b = Broker(settings.amqp_url, settings.events_exchange)
    await b.connect()
    yield b
    await b.close()


@pytest.fixture
def refusing_queue(settings: ServiceSettings) -> Callable[[str], AbstractAsyncContextManager[None]]:
    """`async with refusing_queue(key)`: while inside, a full queue (length 0, `reject-publish`) is bound to
    `key` on the events exchange, so the broker nacks every publish routed there."""

    @asynccontextmanager
    async def refusing(key: str) -> AsyncIterator[None]:
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                settings.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(
                f"refusing.{key}", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
            )
            await queue.bind(exchange, key)
            try:
                yield
            finally:
                await queue.delete(if_unused=False, if_empty=False)

    return refusing
