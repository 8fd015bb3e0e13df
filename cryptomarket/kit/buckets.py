"""Token buckets keyed by name: a burst, then a steady rate, for limits on what clients do.

`LocalBuckets` keeps them in this process (embedded mode, and the stand-in while Redis is away);
`cryptomarket/distributed/rate_limit.py` keeps the same buckets in Redis, shared by every replica.
"""

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


class TokenBucket:
    """Credits that refill continuously up to a cap; starts full."""

    def __init__(
        self, cap: float, refill_per_second: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cap = cap
        self.refill_per_second = refill_per_second
        self._clock = clock
        self._level = cap
        self._updated = clock()

    @property
    def level(self) -> float:
        self._refill()
        return self._level

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.cap, self._level + (now - self._updated) * self.refill_per_second)
        self._updated = now

    def try_take(self, cost: float, *, overdraft: float = 0.0) -> bool:
        """Take the credits if they are there now (going at most `overdraft` below zero)."""
        self._refill()
        if self._level + overdraft >= cost:
            self._level -= cost
            return True
        return False

    def wait_time(self, cost: float, *, overdraft: float = 0.0) -> float:
        """Seconds until `cost` credits will be there."""
        self._refill()
        return max(0.0, (cost - overdraft - self._level) / self.refill_per_second)

    def drain(self) -> None:
        """Empty the bucket, as Deribit's is after a 10028."""
        self._refill()
        self._level = min(self._level, 0.0)


MAX_TRACKED = 10_000  # buckets remembered in a process; the least recently used is forgotten


@dataclass(frozen=True)
class Rate:
    burst: int
    per_minute: float

    @property
    def per_second(self) -> float:
        return self.per_minute / 60


Bucket = tuple[str, Rate]


class Buckets(Protocol):
    async def take(
        self, spend: Sequence[Bucket], require: Sequence[Bucket], cost: float = 1.0
    ) -> float:
        """Take `cost` tokens from each of `spend` if they and `require` all have them: 0.0;
        else take nothing and return the seconds until they will."""
        ...

    async def charge(self, buckets: Sequence[Bucket], cost: float = 1.0) -> None:
        """Take `cost` tokens from each, even below zero (what was charged for happened)."""
        ...


class LocalBuckets:
    """Buckets in this process (embedded mode, and the fallback while Redis is down)."""

    def __init__(self) -> None:
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    async def take(
        self, spend: Sequence[Bucket], require: Sequence[Bucket], cost: float = 1.0
    ) -> float:
        waits = [self._bucket(key, rate).wait_time(cost) for key, rate in [*spend, *require]]
        if any(waits):
            return max(waits)
        for key, rate in spend:
            self._bucket(key, rate).try_take(cost)
        return 0.0

    async def charge(self, buckets: Sequence[Bucket], cost: float = 1.0) -> None:
        for key, rate in buckets:
            self._bucket(key, rate).try_take(cost, overdraft=rate.burst)

    def take_now(self, key: str, rate: Rate, cost: float, *, overdraft: float = 0.0) -> float:
        """Take `cost` from one bucket, going at most `overdraft` below zero: 0.0, else the
        seconds until it could."""
        bucket = self._bucket(key, rate)
        if bucket.try_take(cost, overdraft=overdraft):
            return 0.0
        return max(bucket.wait_time(cost, overdraft=overdraft), 1e-3)

    def _bucket(self, key: str, rate: Rate) -> TokenBucket:
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(rate.burst, rate.per_second, time.monotonic)
        self._buckets[key] = bucket
        while len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
        return bucket
