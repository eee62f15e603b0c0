"""The testcontainers path: with a Docker engine, the four servers start as containers and answer at the URLs
they export. Skipped, saying so, where no engine answers (as on the shared development machine)."""

from __future__ import annotations

import os

import aio_pika
import boto3
import pytest
import redis.asyncio as redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from lumiku_devtools.infra_selection import SERVERS, Choice, docker_answers, s3_keys, start_containers

pytestmark = pytest.mark.skipif(
    not docker_answers(),
    reason="no Docker engine answers (DOCKER_HOST or /var/run/docker.sock): the testcontainers path cannot run here",
)


async def test_every_server_starts_as_a_container_and_answers() -> None:
    choices = [Choice(server, "container", "test") for server in SERVERS]
    with start_containers(choices) as env:
        assert set(env) >= {s.env_var for s in SERVERS}
        assert os.environ["POSTGRES_URL"] == env["POSTGRES_URL"]
        engine = create_async_engine(f"{env['POSTGRES_URL']}/postgres")
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        await engine.dispose()
        connection = await aio_pika.connect(env["AMQP_URL"])
        await connection.close()
        client = redis.from_url(env["REDIS_URL"])
        assert await client.ping()
        await client.aclose()
        key, secret = s3_keys()
        s3 = boto3.client(
            "s3",
            endpoint_url=env["TEST_S3_ENDPOINT_URL"],
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="lumiku-containers-test")
        assert "lumiku-containers-test" in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert "TEST_S3_ENDPOINT_URL" not in os.environ or os.environ["TEST_S3_ENDPOINT_URL"] != env["TEST_S3_ENDPOINT_URL"]
