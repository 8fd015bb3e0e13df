"""Look-ups of one key each, served together: one query for every key asked at about once.

After a restart every client comes back within seconds, each asking the store for its session and
subscriptions; one query per request would keep a pool of connections (and, under SQLite, their
threads) busy for every one of them. Here the first key asked is looked up at once, with the keys
asked before that query starts; keys asked while it runs go together in the next one. A key never
gets an answer read before it was asked: one in flight is asked again in the next query, so a
change committed before the ask (a sign-out, a new subscription) is always seen.

One answer may wake a thousand callers (every stream of a user asks for its session): they go on
through a pacer (kit/pacer.py), a few dozen a round of the loop, so their work does not hold the
loop in one piece while every other stream's tick waits.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

from cryptomarket.kit.pacer import Pacer

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_BATCH = 500  # keys per query: well inside every database's limit of bound parameters


class Batched(Generic[K, V]):
    def __init__(
        self, load: Callable[[list[K]], Awaitable[Mapping[K, V]]], *, max_batch: int = MAX_BATCH
    ) -> None:
        self._load = load  # the keys' values; a key left out has none (None)
        self._max_batch = max_batch
        self._asked: dict[K, asyncio.Future[V | None]] = {}  # not yet in a query
        self._runner: asyncio.Task[None] | None = None
        self._pacer = Pacer()
        self.queries = 0  # run since start

    async def get(self, key: K) -> V | None:
        future = self._asked.get(key)
        if future is None:
            future = self._asked[key] = asyncio.get_running_loop().create_future()
            if self._runner is None:
                self._runner = asyncio.create_task(self._run(), name="batched-lookups")
        # Shielded: a caller that gives up must not cancel the answer others with the key wait for.
        value = await asyncio.shield(future)
        await self._pacer.turn()
        return value

    async def _run(self) -> None:
        try:
            while self._asked:
                keys = list(self._asked)[: self._max_batch]
                batch = {key: self._asked.pop(key) for key in keys}
                try:
                    self.queries += 1
                    found = await self._load(keys)
                except Exception as error:
                    _fail(batch, error)
                except BaseException as error:  # cancelled (shutdown): nobody is left waiting
                    _fail(batch, error)
                    _fail(self._asked, error)
                    raise
                else:
                    for key, future in batch.items():
                        if not future.done():
                            future.set_result(found.get(key))
        finally:
            self._runner = None


def _fail(futures: dict[K, "asyncio.Future[V | None]"], error: BaseException) -> None:
    for future in futures.values():
        if not future.done():
            if isinstance(error, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(error)
                # Every caller re-raises it; one that gave up must not leave it "never retrieved".
                with contextlib.suppress(BaseException):
                    future.exception()
    futures.clear()
