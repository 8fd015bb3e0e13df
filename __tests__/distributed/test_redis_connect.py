"""The processes' Redis client under a burst: after a restart thousands of streams open at once,
each asking Redis for its rate limits. More callers than the pool has connections must wait for
one, not fail: a failure reads as "Redis is away" and the limits fall back to each replica."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from __tests__.servers import RedisServer
from cryptomarket.distributed.connect import POOL_SIZE, async_redis
from cryptomarket.distributed.outages import OutageLog
from cryptomarket.distributed.rate_limit import RedisBuckets
from cryptomarket.kit.buckets import Rate

BURST = 10 * POOL_SIZE  # past redis-py's default pool (100), which raised MaxConnectionsError


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = async_redis(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


async def test_a_burst_of_callers_past_the_pool_all_get_their_answer(redis: Redis) -> None:
    answers = await asyncio.gather(*(redis.incr("burst") for _ in range(BURST)))

    assert sorted(answers) == list(range(1, BURST + 1))
    clients = await redis.client_list()
    assert len(clients) <= POOL_SIZE


async def test_a_burst_of_stream_opens_keeps_the_limits_in_redis(redis: Redis) -> None:
    outages = OutageLog("redis")
    buckets = RedisBuckets(redis, outages)
    opens = [("opens:user", Rate(burst=BURST, per_minute=1.0))]

    waits = await asyncio.gather(*(buckets.take(opens, []) for _ in range(BURST)))

    assert waits == [0.0] * BURST
    assert outages.current is None and outages.last is None  # none fell back to this process
    assert await buckets.take(opens, []) > 0  # the burst was spent in Redis, for every replica
