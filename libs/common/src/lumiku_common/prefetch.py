"""Asking ahead: a call whose input is only known after another call can often start with the input it had
last time, alongside that other call. `Remembered` keeps those inputs (bounded), `ahead` runs the early call
beside the block and drops it when the block did not use it.

    async with ahead(fetch(hinted)) as early:
        ...                                   # the call that says what is really needed
        result = await early if still_right else await fetch(actual)
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class Remembered(Generic[K, V]):
    """At most `capacity` entries; the least recently read or written goes first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


@asynccontextmanager
async def ahead(call: Coroutine[Any, Any, T]) -> AsyncIterator[asyncio.Task[T]]:
    """`call` running alongside the block; cancelled when the block ends if it is still running. An outcome
    nobody awaited (the block found it was not needed) is dropped, a failure included: the same call, made when
    it is needed, reports its own."""
    task = asyncio.ensure_future(call)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log a failure nobody needed as never retrieved
