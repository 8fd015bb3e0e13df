"""One asyncio lock per key, kept only while someone holds or waits for it.

A plain dict of locks grows with every key ever used, and an entry cannot simply be deleted: a
task woken by `release` may not have taken the lock yet, and a new lock made for the same key
would let a second task in beside it. Counting the users of each entry makes the deletion safe:
the entry goes when its last user leaves.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class KeyedLock:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._entries.get(key) or (asyncio.Lock(), 0)
        self._entries[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._entries[key]
            if users == 1:
                del self._entries[key]
            else:
                self._entries[key] = (lock, users - 1)
