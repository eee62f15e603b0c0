"""`python -m lumiku_devtools.infra`: after scripts/infra.sh found the ports open, makes sure RabbitMQ really
answers AMQP, and clears what killed test runs left behind.

Seen on these machines: a broker holding hundreds of leftover quorum queues from killed test sessions kept
accepting TCP but never answered the AMQP handshake, so every test waited for its timeout. A local broker that
does not answer is restarted (the same command the machine notes give); leftover test queues (`test.*`, no
consumer) are deleted. Nothing outside the `test.` prefix is touched, so `make dev` data stays.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from contextlib import suppress

import aio_pika

from lumiku_common.settings import ServiceSettings

TEST_PREFIX = "test."


async def broker_answers(url: str, timeout: float = 15) -> bool:
    try:
        connection = await asyncio.wait_for(aio_pika.connect(url, timeout=timeout), timeout + 1)
    except Exception:
        return False
    await connection.close()
    return True


def restart_local_broker() -> None:
    print("infra: RabbitMQ accepts connections but does not answer AMQP; restarting it", file=sys.stderr)
    with suppress(subprocess.TimeoutExpired):  # a stuck broker may not stop either
        subprocess.run(["rabbitmqctl", "stop"], timeout=60, check=False, capture_output=True)
    subprocess.run(["pkill", "-9", "-f", "beam.smp"], check=False)
    time.sleep(2)
    subprocess.run(["rabbitmq-server", "-detached"], check=False)


def idle_test_queues() -> list[str]:
    try:
        listed = subprocess.run(
            ["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name", "consumers"],
            timeout=120,
            check=False,
            capture_output=True,
            text=True,
        )
    except subprocess.TimeoutExpired:
        return []
    rows = (line.split("\t") for line in listed.stdout.splitlines())
    return [row[0] for row in rows if len(row) == 2 and row[0].startswith(TEST_PREFIX) and row[1].strip() == "0"]


async def delete_queues(url: str, names: list[str]) -> int:
    """Best effort, one channel per queue: a queue in use by now (or gone) closes its channel, not the run."""
    deleted = 0
    connection = await aio_pika.connect(url)
    async with connection:
        for name in names:
            with suppress(Exception):
                async with connection.channel() as channel:
                    # Listed with no consumer; quorum queues refuse `if_unused` (and it closes the connection).
                    await channel.queue_delete(name)
                    deleted += 1
    return deleted


async def main() -> int:
    url = ServiceSettings().amqp_url
    local = shutil.which("rabbitmqctl") is not None
    if not await broker_answers(url):
        if not local:
            print(f"infra: RabbitMQ at {url} does not answer AMQP", file=sys.stderr)
            return 1
        restart_local_broker()
        deadline = time.monotonic() + 120
        while not await broker_answers(url):
            if time.monotonic() > deadline:
                print("infra: RabbitMQ did not come back", file=sys.stderr)
                return 1
            await asyncio.sleep(2)
    if local:
        stale = idle_test_queues()
        if stale:
            try:
                print(f"infra: removed {await delete_queues(url, stale)} leftover test queues")
            except Exception as exc:  # a clean-up, not a precondition
                print(f"infra: could not remove leftover test queues: {exc!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
