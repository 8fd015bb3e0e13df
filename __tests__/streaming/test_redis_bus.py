"""The Redis bus between processes, against a real Redis server (restarted in the middle)."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from __tests__.helpers import eventually
from __tests__.servers import RedisServer
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.streaming import events
from cryptomarket.streaming.bus import Event, UpstreamStatus
from cryptomarket.streaming.redis_bus import (
    CUT_OFF_REASON,
    TICKS_STREAM,
    RedisBus,
    pack,
    unpack,
)

Factory = Callable[..., RedisBus]


@pytest.fixture
async def buses(redis_server: RedisServer) -> AsyncIterator[Factory]:
    made: list[tuple[RedisBus, Redis]] = []

    def make(*, retry_after: float = 0.05, **start: bool) -> RedisBus:
        client = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
        backoff = lambda: Backoff(initial=retry_after, maximum=max(retry_after, 0.3))  # noqa: E731
        bus = RedisBus(client, backoff=backoff)
        bus.start(**start)
        made.append((bus, client))
        return bus

    yield make
    for bus, client in made:
        await bus.stop()
        await client.aclose()


def test_events_survive_the_trip_and_a_tick_keeps_its_frame() -> None:
    tick = Tick("btc_usd", 95_000.5, 1_795_000_000_123)
    received, frame = unpack(pack(tick))
    assert received == tick
    assert frame == events.price_frame(tick)
    gap = Gap("eth_usd", 1, 2, "why")
    assert unpack(pack(gap)) == (gap, None)
    status = UpstreamStatus("stale", datetime(2026, 1, 1, tzinfo=UTC))
    assert unpack(pack(status)) == (status, None)


def test_a_tick_keeps_its_publish_stamp_to_the_microsecond() -> None:
    stamp = datetime(2026, 3, 4, 5, 6, 7, 891_011, tzinfo=UTC)
    message = pack(Tick("btc_usd", 1.5, 1_795_000_000_123, stamp))
    assert b'"received_us": 1772600767891011' in message.partition(b"\n")[0]
    received, _ = unpack(message)
    assert isinstance(received, Tick) and received.received_at == stamp
    # A message from before the stamp was carried: received now.
    old = b'{"kind": "tick", "ticker": "btc_usd", "price": 1.5, "timestamp": 1}\n'
    before = datetime.now(UTC)
    tick, _ = unpack(old)
    assert isinstance(tick, Tick) and before <= tick.received_at <= datetime.now(UTC)


async def test_a_publisher_reaches_every_replica_with_the_same_bytes(
    buses: Factory, redis_server: RedisServer
) -> None:
    publisher = buses(receiving=False)
    replicas = [buses(publishing=False) for _ in range(2)]
    received: list[list[tuple[Event, bytes | None]]] = [[], []]
    for replica, inbox in zip(replicas, received, strict=True):
        replica.subscribe(lambda event, frame, inbox=inbox: inbox.append((event, frame)))
    await eventually(lambda: all(r.connected for r in replicas), what="replicas subscribed")

    ticks = [Tick("btc_usd", 100.0 + i, 1_795_000_000_000 + i) for i in range(50)]
    for tick in ticks:
        publisher.publish(tick)
    publisher.publish(UpstreamStatus("connected", datetime.now(UTC)))
    await eventually(lambda: all(len(inbox) == 51 for inbox in received), what="all delivered")
    for inbox in received:
        assert [event for event, _ in inbox[:50]] == ticks
        assert [frame for _, frame in inbox[:50]] == [events.price_frame(t) for t in ticks]
    client = Redis.from_url(redis_server.url)
    assert await client.xlen(TICKS_STREAM) >= 50
    await client.aclose()


async def test_a_redis_restart_is_ridden_out(buses: Factory, redis_server: RedisServer) -> None:
    publisher = buses(receiving=False)
    replica = buses(publishing=False)
    inbox: list[Event] = []
    replica.subscribe(lambda event, _frame: inbox.append(event))
    await eventually(lambda: replica.connected, what="subscribed")
    publisher.publish(Tick("btc_usd", 1.0, 1))
    await eventually(lambda: len(inbox) == 1, what="first tick")

    await asyncio.to_thread(redis_server.stop)
    publisher.publish(Tick("btc_usd", 2.0, 2))  # held while Redis is away
    await asyncio.to_thread(redis_server.start)
    await eventually(lambda: replica.connected, timeout=15, what="subscribed again")
    publisher.publish(Tick("btc_usd", 3.0, 3))
    await eventually(lambda: inbox[-1:] == [Tick("btc_usd", 3.0, 3)], timeout=15, what="resumed")
    # The tick held during the outage arrived (by pub/sub, or by the catch-up from the stream).
    assert [e.timestamp for e in inbox if isinstance(e, Tick)] == [1, 2, 3]
    assert publisher.dropped == 0


async def test_a_replica_away_from_redis_catches_up_on_every_tick_and_gap_it_missed(
    buses: Factory, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cryptomarket.streaming.redis")
    admin = Redis.from_url(redis_server.url)
    await admin.flushdb()  # no other test's entries in the stream
    publisher = buses(receiving=False)
    replica = buses(publishing=False, retry_after=1.0)  # away for a second once cut off
    inbox: list[Event] = []
    replica.subscribe(lambda event, _frame: inbox.append(event))
    await eventually(lambda: replica.connected, what="subscribed")
    before = [Tick("btc_usd", 1.0, 1), Gap("btc_usd", 2, 3, "delivered before the cut")]
    for event in before:
        publisher.publish(event)
    await eventually(lambda: len(inbox) == 2, what="delivered by pub/sub")

    await admin.client_kill_filter(_type="pubsub")  # the replica's subscription, cut
    await eventually(lambda: not replica.connected, what="cut off")
    # Published while the replica hears nothing: a gap (an outage's), and more entries than one
    # page of the catch-up reads.
    missed: list[Event] = [Gap("btc_usd", 4, 6, "an outage"), Tick("btc_usd", 7.0, 7)]
    missed += [Tick("eth_usd", 1.0, n) for n in range(1, 2_501)]
    for event in missed:
        publisher.publish(event)
    await eventually(lambda: publisher.backlog == 0, what="published")
    await admin.aclose()

    await eventually(lambda: len(inbox) >= len(before) + len(missed), timeout=15, what="caught up")
    assert inbox == before + missed  # each once, in order; the gap delivered before not again
    assert any("caught up on" in record.getMessage() for record in caplog.records)


async def test_a_catch_up_cut_short_is_done_again_from_where_the_subscription_was_lost(
    redis_server: RedisServer,
) -> None:
    admin = Redis.from_url(redis_server.url)
    await admin.flushdb()
    clock = [time.time()]  # the replica's own clock, moved on by hand below
    publisher_client = Redis.from_url(redis_server.url, socket_timeout=2)
    publisher = RedisBus(publisher_client)
    publisher.start(receiving=False)
    client = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    replica = RedisBus(
        client, backoff=lambda: Backoff(initial=1.0, maximum=1.0), clock=lambda: clock[0]
    )
    replica.start(publishing=False)
    inbox: list[Event] = []
    replica.subscribe(lambda event, _frame: inbox.append(event))
    read_stream = client.xrange
    reads = 0

    async def flapping_read(*args: object, **kwargs: object) -> object:
        nonlocal reads
        reads += 1
        if reads == 1:  # Redis goes away again in the middle of the first catch-up...
            clock[0] += 300  # ...and stays away for minutes
            raise RedisConnectionError("connection reset by peer")
        return await read_stream(*args, **kwargs)

    try:
        await eventually(lambda: replica.connected, what="subscribed")
        publisher.publish(Tick("btc_usd", 1.0, 1))
        await eventually(lambda: len(inbox) == 1, what="delivered by pub/sub")
        client.xrange = flapping_read  # type: ignore[method-assign]
        await admin.client_kill_filter(_type="pubsub")
        await eventually(lambda: not replica.connected, what="cut off")
        missed: list[Event] = [Tick("btc_usd", 2.0, 2), Gap("btc_usd", 3, 5, "an outage")]
        for event in missed:
            publisher.publish(event)
        await eventually(lambda: publisher.backlog == 0, what="published")
        await eventually(lambda: len(inbox) == 3, timeout=15, what="caught up at the second try")
        assert inbox == [Tick("btc_usd", 1.0, 1), *missed]
        assert reads >= 2
    finally:
        await replica.stop()
        await publisher.stop()
        for each in (client, publisher_client, admin):
            await each.aclose()


async def test_a_replica_cut_off_past_the_streams_retention_is_told_what_it_missed(
    buses: Factory, redis_server: RedisServer
) -> None:
    # Away longer than the stream keeps entries (an hour): what was trimmed meanwhile cannot
    # be caught up on; the replica's streams must get a gap for it, not silence.
    admin = Redis.from_url(redis_server.url)
    await admin.flushdb()
    publisher = buses(receiving=False)
    replica = buses(publishing=False, retry_after=1.0)
    inbox: list[Event] = []
    replica.subscribe(lambda event, _frame: inbox.append(event))
    await eventually(lambda: replica.connected, what="subscribed")
    for event in (Tick("btc_usd", 1.0, 1), Tick("eth_usd", 1.0, 1)):
        publisher.publish(event)
    await eventually(lambda: len(inbox) == 2, what="delivered by pub/sub")

    await admin.client_kill_filter(_type="pubsub")
    await eventually(lambda: not replica.connected, what="cut off")
    for timestamp in (2, 3):
        publisher.publish(Tick("btc_usd", 1.0, timestamp))
        publisher.publish(Tick("eth_usd", 1.0, timestamp))
    await eventually(lambda: publisher.backlog == 0, what="published")
    await admin.xtrim(TICKS_STREAM, maxlen=0)  # as the retention trims after an hour
    publisher.publish(Tick("btc_usd", 1.0, 4))
    await eventually(lambda: publisher.backlog == 0, what="published after the trim")
    await admin.aclose()

    await eventually(lambda: len(inbox) >= 5, timeout=15, what="caught up")
    assert inbox[2:4] == [Gap("btc_usd", 2, 3, CUT_OFF_REASON), Tick("btc_usd", 1.0, 4)]
    eth = inbox[4]  # none of its ticks left: up to about when the last trimmed one went in
    assert isinstance(eth, Gap) and (eth.ticker, eth.from_ts, eth.reason) == (
        "eth_usd",
        2,
        CUT_OFF_REASON,
    )
    assert eth.to_ts >= 3 and len(inbox) == 5
