"""Issue 11, defect 6 (Redis parts): what the bus drops while Redis is away is published as a gap,
and trimming by age never passes what the persist job has not stored."""

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from __tests__.helpers import eventually
from __tests__.servers import RedisServer
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.distributed.stream_bounds import RETENTION_MS, StreamBounds, parse_id
from cryptomarket.jobs.persist import CONSUMER, GROUP
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.streaming import redis_bus
from cryptomarket.streaming.bus import Event
from cryptomarket.streaming.redis_bus import TICKS_STREAM, UPSTREAM_STATUS_KEY, RedisBus


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    await redis.delete(TICKS_STREAM, UPSTREAM_STATUS_KEY)  # (a status another test left)
    yield redis
    await redis.delete(TICKS_STREAM)
    await redis.aclose()


async def test_ticks_a_full_backlog_dropped_are_published_as_gaps_once_redis_is_back(
    redis_server: RedisServer, client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_bus, "BACKLOG", 50)
    allowed = True
    publisher = RedisBus(
        client, backoff=lambda: Backoff(initial=0.05, maximum=0.3), may_publish=lambda: allowed
    )
    replica = RedisBus(
        Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2),
        backoff=lambda: Backoff(initial=0.05, maximum=0.3),
    )
    inbox: list[Event] = []
    replica.subscribe(lambda event, _frame: inbox.append(event) if event_of_ticks(event) else None)
    publisher.start(receiving=False)
    replica.start(publishing=False)
    try:
        await eventually(lambda: replica.connected, what="subscribed")
        await asyncio.to_thread(redis_server.stop)
        allowed = False  # held until the replica is back too, so pub/sub reaches it
        ticks = [Tick(t, 1.0, ts) for ts in range(1, 201) for t in ("btc_usd", "eth_usd")]
        for tick in ticks:
            publisher.publish(tick)
        assert publisher.dropped == len(ticks) - 50
        await asyncio.to_thread(redis_server.start)
        await eventually(lambda: replica.connected, timeout=15, what="subscribed again")
        allowed = True
        await eventually(lambda: len(inbox) >= 52, timeout=15, what="the gaps and the rest")
    finally:
        await publisher.stop()
        await replica.stop()
        await replica.redis.aclose()
    gaps = [event for event in inbox if isinstance(event, Gap)]
    received = [event for event in inbox if isinstance(event, Tick)]
    assert received == ticks[-50:]  # what the backlog kept, in order
    assert inbox[: len(gaps)] == gaps  # the gaps come first: they are older
    for ticker in ("btc_usd", "eth_usd"):
        (gap,) = (gap for gap in gaps if gap.ticker == ticker)
        kept = min(tick.timestamp for tick in received if tick.ticker == ticker)
        assert (gap.from_ts, gap.to_ts) == (1, kept - 1), gap


def event_of_ticks(event: Event) -> bool:
    return isinstance(event, Tick | Gap)


async def test_trimming_by_age_keeps_what_the_persist_job_has_not_stored(client: Redis) -> None:
    now = [1_800_000_000.0]
    bus = RedisBus(client, clock=lambda: now[0])
    bus.start(receiving=False)
    try:
        for second in range(10):
            bus.publish(Tick("btc_usd", 1.0, 1_000 + second))
            await eventually(lambda: bus.backlog == 0, what="published")
            now[0] += 60.0
    finally:
        await bus.stop()  # from here on, only the bounds below trim
    await client.xgroup_create(TICKS_STREAM, GROUP, id="0")
    # The persist job stored the first three and holds the fourth, read but not stored.
    read = await client.xreadgroup(GROUP, CONSUMER, {TICKS_STREAM: ">"}, count=4)
    ids = [entry_id for entry_id, _ in read[0][1]]
    await client.xack(TICKS_STREAM, GROUP, *ids[:3])
    now[0] += RETENTION_MS / 1000 + 3_600  # everything is older than the retention now
    bounds = StreamBounds(client, lambda: now[0])
    await bounds.enforce()
    left = [entry_id for entry_id, _ in await client.xrange(TICKS_STREAM)]
    assert left[0] == ids[3]  # the unstored ones all kept, the pending one included
    assert len(left) == 7
    await client.xack(TICKS_STREAM, GROUP, ids[3])
    await bounds.enforce()
    assert [entry_id for entry_id, _ in await client.xrange(TICKS_STREAM)] == left[1:]
    assert bounds.trimmed == 4 and bounds.trimmed_unstored == 0
    # Entry ids are the publisher's clock, a minute apart as published.
    stamps = [parse_id(entry_id)[0] for entry_id in left]
    assert {later - earlier for earlier, later in itertools.pairwise(stamps)} == {60_000}


async def test_memory_used_elsewhere_never_costs_the_unstored_ticks(client: Redis) -> None:
    for second in range(10):
        await client.xadd(TICKS_STREAM, {"event": b"x"}, id=f"{1_000 + second}-0")
    await client.xgroup_create(TICKS_STREAM, GROUP, id="0")
    read = await client.xreadgroup(GROUP, CONSUMER, {TICKS_STREAM: ">"}, count=4)
    await client.xack(TICKS_STREAM, GROUP, *[entry_id for entry_id, _ in read[0][1]])
    await client.set("test:something-else", b"z" * 2_000_000)
    try:
        used = (await client.info("memory"))["used_memory"]
        await client.config_set("maxmemory", str(int(used / 0.7)))  # 70 %, not from the stream
        bounds = StreamBounds(client, lambda: 1.0)  # (nothing is old by age)
        await bounds.enforce()
    finally:
        await client.config_set("maxmemory", "0")
        await client.delete("test:something-else")
    assert await client.xlen(TICKS_STREAM) == 6  # the stored four cut, the unstored six kept
    assert bounds.trimmed == 4 and bounds.trimmed_unstored == 0
