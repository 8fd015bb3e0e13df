"""The price routes are public, so what they cost is bounded per client address: a request spends
from its address's bucket in proportion to the rows it may read (a page of 10,000 rows costs
eleven small ones, a CSV export of a whole range twenty), and past the bucket it is 429 with
Retry-After. In distributed mode the buckets live in Redis, so replicas share them.

And an address runs one big read at a time in a process (a page of 2,000 rows or more, or an
export, until its last byte is sent): big reads are built in worker threads, which share
the interpreter with the event loop, so a burst of them from one client would hold back every
live stream. Another one from the same address meanwhile is 429 at once, costing nothing.
"""

import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from cryptomarket.core.errors import TooMany
from cryptomarket.kit.addresses import address_key
from cryptomarket.kit.buckets import Buckets, LocalBuckets, Rate

ROWS_PER_UNIT = 1_000
EXPORT_COST = 20
BIG_READ = 3  # units from which a read is big: a page of 2,000 rows or more, or an export
BIG_READS_AT_ONCE = 1  # per address and process


def request_cost(limit: str | None, export: bool) -> float:
    """Units a history request spends: one, plus one per thousand rows of its page."""
    if export:
        return EXPORT_COST
    rows = int(limit) if limit is not None and limit.isdigit() and len(limit) <= 6 else 0
    return 1 + rows // ROWS_PER_UNIT


class HistoryLimiter:
    def __init__(
        self, *, burst: int = 120, per_minute: float = 1_200, buckets: Buckets | None = None
    ) -> None:
        self.rate = Rate(burst, per_minute)
        self.buckets: Buckets = buckets or LocalBuckets()
        self._big_reads: Counter[str] = Counter()  # per address key, under way in this process

    @contextlib.asynccontextmanager
    async def admitted(self, address: str, cost: float) -> AsyncIterator[None]:
        """Admit the request (or raise TooMany) for as long as it runs."""
        if cost < BIG_READ:
            await self.admit(address, cost)
            yield
            return
        key = address_key(address)
        if self._big_reads[key] >= BIG_READS_AT_ONCE:
            raise TooMany(
                "this address already has a big price history read under way (a page of 2000 "
                "rows or more, or a CSV export): one at a time; send the next when it is done",
                code="too_many_history_requests",
                retry_after=1,
            )
        self._big_reads[key] += 1
        try:
            await self.admit(address, cost)
            yield
        finally:
            self._big_reads[key] -= 1
            if not self._big_reads[key]:
                del self._big_reads[key]

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
