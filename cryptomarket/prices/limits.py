"""The price routes are public, so what they cost is bounded per client address: a request spends
from its address's bucket in proportion to the rows it may read (a page of 10,000 rows costs
eleven small ones, a CSV export of a whole range twenty), and past the bucket it is 429 with
Retry-After. In distributed mode the buckets live in Redis, so replicas share them.

And an address runs one big read at a time in a process (a page of 2,000 rows or more, or an
export, until its last byte is sent): big reads are built in worker threads, which share
the interpreter with the event loop, so a burst of them from one client would hold back every
live stream. The next ones from the same address wait their turn (clients behind one NAT, a
dashboard and a script, still get their answers); past BIG_READS_WAITING, a big read is 429 at
once, costing nothing.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from pydantic import TypeAdapter, ValidationError

from cryptomarket.core.errors import TooMany
from cryptomarket.kit.addresses import address_key
from cryptomarket.kit.buckets import Buckets, LocalBuckets, Rate
from cryptomarket.prices.service import MAX_LIMIT

ROWS_PER_UNIT = 1_000
EXPORT_COST = 20
BIG_READ = 3  # units from which a read is big: a page of 2,000 rows or more, or an export
BIG_READS_AT_ONCE = 1  # per address and process
BIG_READS_WAITING = 8  # per address; past them a big read is 429 at once
BIG_READ_WAIT = 30.0  # seconds a big read waits for its turn, then 429


class Turn:
    """An address's big reads: the ones running (at most BIG_READS_AT_ONCE) and waiting."""

    def __init__(self) -> None:
        self.running = asyncio.Semaphore(BIG_READS_AT_ONCE)
        self.users = 0


def request_cost(limit: str | None, export: bool) -> float:
    """Units a history request spends: one, plus one per thousand rows of its page."""
    if export:
        return EXPORT_COST
    return 1 + page_rows(limit) // ROWS_PER_UNIT


_WHOLE_NUMBER = TypeAdapter(int)


def page_rows(limit: str | None) -> int:
    """The page size the route will read, parsed as FastAPI parses it ("0010000", "+1_0000"
    and "10000.0" are all 10,000); 0 for a value the route refuses (422, whatever its cost)."""
    if limit is None or len(limit) > 32:
        return 0
    try:
        rows = _WHOLE_NUMBER.validate_python(limit)
    except ValidationError:
        return 0
    return rows if 0 < rows <= MAX_LIMIT else 0


class HistoryLimiter:
    def __init__(
        self, *, burst: int = 120, per_minute: float = 1_200, buckets: Buckets | None = None
    ) -> None:
        self.rate = Rate(burst, per_minute)
        self.buckets: Buckets = buckets or LocalBuckets()
        self._turns: dict[str, Turn] = {}  # per address key with big reads in this process

    @contextlib.asynccontextmanager
    async def admitted(self, address: str, cost: float) -> AsyncIterator[None]:
        """Admit the request (or raise TooMany) for as long as it runs; a big read first waits
        for its address's turn."""
        if cost < BIG_READ:
            await self.admit(address, cost)
            yield
            return
        key = address_key(address)
        turn = self._turns.get(key) or self._turns.setdefault(key, Turn())
        if turn.users >= BIG_READS_AT_ONCE + BIG_READS_WAITING:
            raise TooMany(
                f"this address has {turn.users} big price history reads under way or waiting "
                "(pages of 2000 rows or more, CSV exports; they run one at a time): send the "
                "next when one is done",
                code="too_many_history_requests",
                retry_after=1,
            )
        turn.users += 1
        try:
            try:
                async with asyncio.timeout(BIG_READ_WAIT):
                    await turn.running.acquire()
            except TimeoutError:
                raise TooMany(
                    f"this address's big price history reads run one at a time, and this one "
                    f"waited {BIG_READ_WAIT:g} s for its turn; try again when they are done",
                    code="too_many_history_requests",
                    retry_after=5,
                ) from None
            try:
                await self.admit(address, cost)
                yield
            finally:
                turn.running.release()
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[key]

    async def admit(self, address: str, cost: float) -> None:
        bucket = (f"history:{address_key(address)}", self.rate)
        wait = await self.buckets.take([bucket], [], min(cost, self.rate.burst))
        if wait:
            raise TooMany(
                "too many price history requests from this address (HISTORY_BURST, then "
                f"HISTORY_PER_MINUTE={self.rate.per_minute:g} units, a unit per 1000 rows); "
                f"try again in {max(wait, 1):.0f} s",
                code="too_many_history_requests",
                retry_after=wait,
            )
