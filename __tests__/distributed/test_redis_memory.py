"""Issue 11, defect 1: the compose Redis settings hold for days of ticks, not 17 hours.

Today's settings failed at about 125,000 stream entries (XADD OOM, the lease evicted). This runs
380,000 (2.2 simulated days of two tickers) through a Redis started with exactly the compose
file's memory settings, with a persist stall that leaves more unstored ticks than fit; the week
(1.2 million) is `make redis-week`.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError
from sqlalchemy import Engine

from __tests__.distributed.redis_pressure import (
    FLOW,
    LimitedRedis,
    PressureRun,
    check,
    compose_memory_settings,
    run_pressure,
    sqlite_store,
)
from cryptomarket.core.tables import Tables
from cryptomarket.distributed.leader import Lease
from cryptomarket.distributed.stream_bounds import RETENTION_MS

pytestmark = pytest.mark.timeout(240)

ROUNDS = 190_000  # simulated seconds of two tickers: 380,000 entries


@pytest.fixture
def limited_redis(tmp_path: Path) -> Iterator[LimitedRedis]:
    server = LimitedRedis(tmp_path / "redis", compose_memory_settings())
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Engine, Tables]]:
    engine, tables = sqlite_store(tmp_path)
    yield engine, tables
    engine.dispose()


def test_the_memory_settings_are_the_compose_files() -> None:
    settings = compose_memory_settings()
    assert settings[settings.index("--maxmemory") + 1] == "32mb"
    # Nothing evicted behind our back: the lease and the job locks are keys with a TTL.
    assert settings[settings.index("--maxmemory-policy") + 1] == "noeviction"


async def test_days_of_ticks_fit_the_compose_redis_with_nothing_lost_silently(
    limited_redis: LimitedRedis, store: tuple[Engine, Tables]
) -> None:
    engine, tables = store
    run = PressureRun(["btc_usd", "eth_usd"], ROUNDS, stall=(40_000, 100_000))
    await run_pressure(limited_redis.url, engine, tables, run)
    assert run.entries >= 3 * 125_000
    assert check(run, engine, tables) == []
    # The stall left more unstored ticks than fit: the cut that made room recorded them.
    assert run.trimmed_unstored > 0
    assert run.gaps_recorded > 0
    # Once stored, the stream keeps an hour by age (its ids are the publisher's clock).
    assert run.clock_ms - RETENTION_MS - 1_000 <= run.stream_first_ms <= run.clock_ms
    client = Redis.from_url(limited_redis.url)
    try:
        # an hour of two tickers, plus what the bus still held when the clock stopped
        assert await client.xlen("cryptomarket:ticks") <= 2 * RETENTION_MS // 1000 + FLOW
    finally:
        await client.aclose()


async def test_the_lease_is_taken_renewed_and_released_even_when_redis_is_full(
    limited_redis: LimitedRedis,
) -> None:
    client = Redis.from_url(limited_redis.url)
    try:
        await client.config_set("maxmemory", "1")  # over the limit: writes are refused
        with pytest.raises(OutOfMemoryError):
            await client.set("anything", "x")
        lease = Lease(client, "test:lease", ttl=3.0)
        await lease.acquire()  # new to this Redis: held at once, led only after a TTL
        assert lease.valid
        assert await lease.renew()
        await lease.release()
        assert await Lease(client, "test:lease", ttl=3.0).acquire()  # released: led at once
    finally:
        await client.config_set("maxmemory", "32mb")
        await client.aclose()
