"""Deribit's credit buckets for the whole deployment, in Redis (distributed mode).

Deribit charges unauthenticated calls to the caller's IP address, and every process of a
deployment calls from the same one: budgets kept per process would let three replicas spend
three times what Deribit refills, and its 10028 ends the session. So every call also takes its
credits from one bucket per kind in Redis, refilled on Redis's clock at Deribit's rate.
Authenticated calls are charged to the user's account by Deribit; counting them here too errs
on the safe side.

While Redis is away each process spends at most its part of the rates (the rates divided by the
number of processes it last heard of), so the deployment still stays within Deribit's. A call
never waits long on a Redis that hangs: past REDIS_WAIT it is taken as away, and asked again
only RETRY_AFTER later.
"""

import asyncio
import time
from collections.abc import Callable

from redis.asyncio import Redis

from cryptomarket.deribit.credits import DEFAULT_LIMITS, SUBSCRIBE_LIMITS, CreditLimits
from cryptomarket.distributed.deribit_sockets import DeploymentSockets
from cryptomarket.distributed.outages import OutageLog
from cryptomarket.distributed.rate_limit import CHARGE, RedisBuckets
from cryptomarket.kit.buckets import Bucket, LocalBuckets, Rate

KEY = "deribit:credits"
REDIS_WAIT = 0.5  # seconds a Deribit call waits for Redis's answer before spending alone
RETRY_AFTER = 1.0  # seconds spent alone before asking Redis again


class SharedCredits:
    """The deployment's credits, spent by every process's CreditBudget after its own."""

    def __init__(
        self,
        redis: Redis,
        outages: OutageLog,
        *,
        processes: Callable[[], int] = lambda: 1,
        default: CreditLimits = DEFAULT_LIMITS,
        subscribe: CreditLimits = SUBSCRIBE_LIMITS,
        margin: int = 10_000,
    ) -> None:
        self._redis = RedisBuckets(redis, outages)
        self._outages = outages
        self._retry_at = 0.0
        self._processes = processes
        self._rates = {
            name: Rate(max(limits.cost, limits.cap - margin), limits.refill_per_second * 60)
            for name, limits in {"default": default, "subscribe": subscribe}.items()
        }
        self._alone = LocalBuckets()

    async def take(self, bucket: str, cost: int, *, overdraft: float = 0.0) -> float:
        """Take `cost` credits of `bucket`, going at most `overdraft` below zero: 0.0, or the
        seconds to wait."""
        answer = await self._in_redis(bucket, cost, overdraft)
        if answer is not None:
            return answer
        key, rate = self._my_part(bucket)
        return self._alone.take_now(key, rate, cost, overdraft=overdraft)

    async def drain(self) -> None:
        """Deribit answered 10028: its buckets for this address are empty, so empty the shared."""
        for bucket, rate in self._rates.items():
            if await self._in_redis(bucket, rate.burst, CHARGE) is None:
                key, part = self._my_part(bucket)
                self._alone.take_now(key, part, part.burst, overdraft=part.burst)

    async def _in_redis(self, bucket: str, cost: float, overdraft: float) -> float | None:
        if time.monotonic() < self._retry_at:
            return None
        shared = [(f"{KEY}:{bucket}", self._rates[bucket])]
        try:
            async with asyncio.timeout(REDIS_WAIT):
                answer = await self._redis.in_redis(shared, 1, cost=cost, overdraft=overdraft)
        except TimeoutError:
            self._outages.failed(f"no answer within {REDIS_WAIT:g} s")
            answer = None
        if answer is None:
            self._retry_at = time.monotonic() + RETRY_AFTER
        return answer

    def _my_part(self, bucket: str) -> Bucket:
        rate, parts = self._rates[bucket], max(1, self._processes())
        part = Rate(max(1, rate.burst // parts), rate.per_minute / parts)
        return (f"{KEY}:{bucket}/{parts}", part)  # a new bucket whenever the split changes


def deployment_limits(
    redis: Redis, outages: OutageLog, *, limit: int, want: int
) -> tuple[DeploymentSockets, SharedCredits]:
    """What a process of a distributed deployment opens its Deribit sockets through."""
    sockets = DeploymentSockets(redis, limit=limit, want=want)
    return sockets, SharedCredits(redis, outages, processes=lambda: sockets.processes)
