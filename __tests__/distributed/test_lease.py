"""The ingest lease: never two leaders, even when Redis forgets who holds it (the chaos run's
Redis restart found a standby leading while the old leader still thought it did)."""

import secrets
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from __tests__.helpers import eventually_async
from __tests__.servers import RedisServer
from cryptomarket.distributed.leader import Lease

TTL = 0.6
STAND_DOWN = 0.2


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    yield redis
    await redis.aclose()


@pytest.fixture
def key() -> str:
    return f"test:lease:{secrets.token_hex(4)}"


async def lead(lease: Lease) -> float:
    """Poll as the ingest process does until the lease may be led; when it could."""
    await eventually_async(lease.acquire, what="the lease to be led")
    return time.monotonic()


async def test_a_lease_redis_forgot_is_not_led_while_its_old_holder_may_still_lead(
    client: Redis, key: str
) -> None:
    old = Lease(client, key, TTL, stand_down=STAND_DOWN)
    await lead(old)
    assert await old.renew()
    renewed_at = time.monotonic()
    await client.delete(key, f"{key}:epoch")  # Redis restarted without its data

    new = Lease(client, key, TTL, stand_down=STAND_DOWN)
    assert not await new.acquire()  # taken, but not to be led yet
    assert new.valid and old.valid  # the old holder cannot know yet
    assert not await old.renew()  # its next renew tells it
    led_at = await lead(new)
    assert not old.valid
    assert led_at - renewed_at >= TTL + STAND_DOWN  # past any deadline the old one had


async def test_an_expired_or_released_lease_is_led_at_once(client: Redis, key: str) -> None:
    first = Lease(client, key, TTL, stand_down=STAND_DOWN)
    await lead(first)  # (a Redis that never knew this lease: the first waits once)

    async def expired() -> bool:
        return not await client.exists(key)

    await eventually_async(expired, what="the dead holder's lease to expire")
    assert not first.valid  # its own deadline passed before Redis dropped the key
    second = Lease(client, key, TTL, stand_down=STAND_DOWN)
    assert await second.acquire()
    assert not await first.acquire()  # held by another

    await second.release()
    assert await Lease(client, key, TTL, stand_down=STAND_DOWN).acquire()
