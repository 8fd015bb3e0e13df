"""Sign-in attempts, limited so that a flooder exhausts only their own budget.

Each attempt costs a Deribit connection and credits, so every attempt spends from its client
address's bucket. A refused secret also spends from the (address, client_id) bucket, which slows
guessing at one key from one address even where an address is allowed many attempts (a NAT).
Nothing is keyed by client_id alone: anyone may know a Client Id, and a bucket they could empty
would lock its owner out. Guessing is kept off by the secret itself (Deribit's secrets are long
random strings, far beyond any number of attempts a set of addresses can make) and by Deribit's
own limits on `public/auth`; the buckets bound what one address costs everyone else.

In embedded mode the buckets live in this process; in distributed mode they live in Redis
(cryptomarket/distributed/rate_limit.py), so every replica spends from the same ones.
"""

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptomarket.core.errors import TooMany
from cryptomarket.deribit.credits import TokenBucket

MAX_TRACKED = 10_000  # buckets remembered in a process; the least recently used is forgotten


@dataclass(frozen=True)
class Rate:
    burst: int
    per_minute: float

    @property
    def per_second(self) -> float:
        return self.per_minute / 60


# Refused secrets per (client address, client_id).
REFUSALS = Rate(burst=5, per_minute=5.0)

Bucket = tuple[str, Rate]


class Buckets(Protocol):
    async def take(self, spend: Sequence[Bucket], require: Sequence[Bucket]) -> float:
        """Take one token from each of `spend` if they and `require` all have one: 0.0; else
        take nothing and return the seconds until they will."""
        ...

    async def charge(self, buckets: Sequence[Bucket]) -> None:
        """Take one token from each, even below zero (what was charged for already happened)."""
        ...


class LocalBuckets:
    """Buckets in this process (embedded mode, and the fallback while Redis is down)."""

    def __init__(self) -> None:
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    async def take(self, spend: Sequence[Bucket], require: Sequence[Bucket]) -> float:
        waits = [self._bucket(key, rate).wait_time(1) for key, rate in [*spend, *require]]
        if any(waits):
            return max(waits)
        for key, rate in spend:
            self._bucket(key, rate).try_take(1)
        return 0.0

    async def charge(self, buckets: Sequence[Bucket]) -> None:
        for key, rate in buckets:
            self._bucket(key, rate).try_take(1, overdraft=rate.burst)

    def _bucket(self, key: str, rate: Rate) -> TokenBucket:
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(rate.burst, rate.per_second, time.monotonic)
        self._buckets[key] = bucket
        while len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
        return bucket


def address_key(address: str) -> str:
    """The bucket of a client address: an IPv6 client is its /64 (one subscriber gets a whole
    /64 and could otherwise take a fresh address per attempt)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AttemptLimiter:
    def __init__(
        self,
        *,
        burst: int = 5,
        per_minute: float = 10.0,
        refusals: Rate = REFUSALS,
        buckets: Buckets | None = None,
    ) -> None:
        self.attempts = Rate(burst, per_minute)
        self.refusals = refusals
        self.buckets: Buckets = buckets or LocalBuckets()

    def _keys(self, address: str, client_id: str) -> tuple[Bucket, Bucket]:
        where = address_key(address)
        return (
            (f"address:{where}", self.attempts),
            (f"refused:{where}:{client_id}", self.refusals),
        )

    async def admit(self, address: str, client_id: str) -> None:
        """Spend one attempt of the address; 429 when it or this key's refusals are out."""
        attempt, refused = self._keys(address, client_id)
        wait = await self.buckets.take([attempt], [refused])
        if wait:
            raise TooMany(
                f"too many sign-in attempts from this address; try again in {max(wait, 1):.0f} s",
                code="too_many_attempts",
            )

    async def refused(self, address: str, client_id: str) -> None:
        """Deribit refused the secret: the address's refusals for this key go down by one."""
        _attempt, refused = self._keys(address, client_id)
        await self.buckets.charge([refused])
