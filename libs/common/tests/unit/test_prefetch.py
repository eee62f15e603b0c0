"""`ahead` runs a call beside a block and drops what the block did not use; `Remembered` is a bounded LRU."""

from __future__ import annotations

import asyncio
import gc

import pytest

from lumiku_common.prefetch import Remembered, ahead

pytestmark = pytest.mark.unit


async def test_a_call_not_awaited_is_cancelled_when_the_block_ends():
    started = asyncio.Event()

    async def slow() -> int:
        started.set()
        await asyncio.sleep(60)
        return 1

    async with ahead(slow()) as early:
        await started.wait()
    await asyncio.sleep(0)
    assert early.cancelled()


async def test_an_awaited_call_gives_its_result_or_its_failure():
    async def ok() -> int:
        return 7

    async def broken() -> int:
        raise LookupError("no such project")

    async with ahead(ok()) as early:
        assert await early == 7
    with pytest.raises(LookupError):
        async with ahead(broken()) as early:
            await early


async def test_a_failure_nobody_awaited_is_not_reported_as_never_retrieved():
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:

        async def broken() -> int:
            raise LookupError("not needed anyway")

        async with ahead(broken()) as early:
            await asyncio.sleep(0)  # it fails while the block goes on without it
        assert early.done() and not early.cancelled()
        del early
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


def test_remembered_drops_the_least_recently_used():
    seen: Remembered[str, int] = Remembered(capacity=2)
    seen.put("a", 1)
    seen.put("b", 2)
    assert seen.get("a") == 1  # read: now the most recent
    seen.put("c", 3)
    assert (seen.get("a"), seen.get("b"), seen.get("c"), len(seen)) == (1, None, 3, 2)
    seen.forget("a")
    seen.forget("a")  # forgetting what is not there is fine
    assert (seen.get("a"), len(seen)) == (None, 1)
