from __future__ import annotations

from collections.abc import AsyncIterator

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
