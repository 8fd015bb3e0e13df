"""Two API replicas in distributed mode, in this process, on one real Redis and one store.

A stand-in for the ingest process publishes on the Redis bus, as `cryptomarket ingest` does.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from redis.asyncio import Redis

from __tests__.helpers import eventually, eventually_async
from __tests__.servers import RedisServer
from __tests__.service import Service, running_service
from __tests__.sse import Event, Stream, open_stream
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.prices.models import Tick
from cryptomarket.streaming.redis_bus import RedisBus

PROFILE_TTL_SECONDS = 27 * 3600


@pytest.fixture
async def replicas(
    simulator: Simulator, sqlite_url: str, redis_server: RedisServer
) -> AsyncIterator[tuple[Service, Service]]:
    async with AsyncExitStack() as stack:
        pair = [
            await stack.enter_async_context(
                running_service(simulator, sqlite_url, REDIS_URL=redis_server.url)
            )
            for _ in range(2)
        ]
        for replica in pair:
            runtime = replica.runtime
            await eventually(
                lambda runtime=runtime: runtime.redis_bus.connected and runtime.control.listening,
                what="replica subscribed to Redis",
            )
        yield pair[0], pair[1]


@pytest.fixture
async def ingest_bus(redis_server: RedisServer) -> AsyncIterator[RedisBus]:
    """Publishes market events like the ingest leader."""
    client = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    bus = RedisBus(client, backoff=lambda: Backoff(initial=0.05, maximum=0.3))
    bus.start(receiving=False)
    yield bus
    await bus.stop()
    await client.aclose()


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_subscription_made_on_a_reaches_the_stream_on_b_and_outlives_a_redis_restart(
    replicas: tuple[Service, Service], ingest_bus: RedisBus, redis_server: RedisServer
) -> None:
    a, b = replicas
    token = await a.sign_in("alice")
    async with (
        a.client_for(token) as on_a,
        b.client_for(token) as on_b,
        open_stream(on_b, params={"timer": 0}) as stream,
        open_stream(on_a, params={"timer": 0}) as stream_on_a,
    ):
        connected = await stream.until("connected")
        assert connected.data["subscriptions"] == []
        await stream_on_a.until("connected")
        for ticker in ("eth_usd", "btc_usd"):
            response = await on_a.get(f"/api/v1/market/alice/create_order/{ticker}")
            assert response.status_code == 201, response.text

        first = Tick("eth_usd", 3_210.5, now_ms())
        ingest_bus.publish(first)
        price = await stream.until("price", ticker="eth_usd", timestamp=first.timestamp)
        assert price.data["price"] == 3_210.5
        assert price.id == f"eth_usd:{first.timestamp}"

        # A tick published while Redis is down reaches B's stream once Redis is back.
        await asyncio.to_thread(redis_server.stop)
        during = Tick("eth_usd", 3_250.0, first.timestamp + 1)
        ingest_bus.publish(during)
        await asyncio.to_thread(redis_server.start)
        held = await stream.until("price", ticker="eth_usd", timeout=20)
        assert (held.id, held.data["price"]) == (f"eth_usd:{during.timestamp}", 3_250.0)
        runtime = b.runtime
        await eventually(
            lambda: runtime.redis_bus.connected and runtime.control.listening,
            timeout=15,
            what="replica B subscribed again",
        )
        after = Tick("eth_usd", 3_300.0, now_ms() + 1)
        ingest_bus.publish(after)
        await stream.until("price", ticker="eth_usd", timestamp=after.timestamp, timeout=15)

        health = (await b.client.get("/health")).json()
        assert health["cache"].startswith("ok (was down"), health

        # An unsubscribe through B stops eth_usd on A's open stream (btc_usd goes on).
        await eventually(
            lambda: a.runtime.redis_bus.connected and a.runtime.control.listening,
            timeout=15,
            what="replica A subscribed again",
        )
        response = await on_b.get("/api/v1/market/alice/cancel_order/eth_usd")
        assert response.status_code == 200
        await eventually(
            lambda: all("eth_usd" not in s.timers for s in a.runtime.hub.streams_of("alice")),
            what="A heard of the unsubscribe",
        )
        dropped = Tick("eth_usd", 3_400.0, after.timestamp + 1)
        marker = Tick("btc_usd", 95_000.0, now_ms() + 2)
        ingest_bus.publish(dropped)
        ingest_bus.publish(marker)  # published after it: once it is here, eth_usd had its turn
        on_a_ids = [event.id for event in await prices_until(stream_on_a, marker)]
        on_b_ids = [event.id for event in await prices_until(stream, marker)]
        for ids in (on_a_ids, on_b_ids):
            assert f"eth_usd:{dropped.timestamp}" not in ids, "eth_usd went on after cancelling"
        # A's stream had eth_usd until then (the check above is not vacuous).
        assert f"eth_usd:{after.timestamp}" in on_a_ids


async def prices_until(stream: Stream, marker: Tick, timeout: float = 15.0) -> list[Event]:
    """Every price event up to and including the marker tick's."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            event = await stream.next_event(timeout)
            if event.event != "price":
                continue
            seen.append(event)
            if event.id == f"{marker.ticker}:{marker.timestamp}":
                return seen


async def test_a_change_on_b_reaches_a_stream_on_a_with_the_cached_latest_price(
    replicas: tuple[Service, Service], ingest_bus: RedisBus
) -> None:
    a, b = replicas
    token = await a.sign_in("bob")
    cached = Tick("eth_usd", 2_000.25, now_ms())
    ingest_bus.publish(cached)  # before anyone watches: only the latest-price cache keeps it
    async with (
        a.client_for(token) as on_a,
        b.client_for(token) as on_b,
        open_stream(on_a) as stream,
    ):
        await stream.until("connected")
        response = await on_b.get("/api/v1/market/bob/create_order/eth_usd?timer=1")
        assert response.status_code == 201, response.text
        price = await stream.until("price", ticker="eth_usd")
        assert price.data["timestamp"] >= cached.timestamp
        await on_b.get("/api/v1/market/bob/cancel_order/eth_usd")
        await eventually(
            lambda: all(not s.timers for s in a.runtime.hub.streams_of("bob")),
            what="the stream on A left eth_usd",
        )


async def test_profiles_and_index_names_are_cached_in_redis(
    replicas: tuple[Service, Service], redis_server: RedisServer
) -> None:
    a, b = replicas
    token = await a.sign_in("alice")
    client = Redis.from_url(redis_server.url)
    try:
        ttl = await client.ttl("cryptomarket:cache:profile:alice")
        assert PROFILE_TTL_SECONDS - 60 < ttl <= PROFILE_TTL_SECONDS
        async with b.client_for(token) as on_b:
            response = await on_b.get("/api/v1/users/alice")
        assert response.status_code == 200
        assert response.json()["profile"]["username"]

        async def names_cached() -> bool:
            return bool(await client.exists("cryptomarket:cache:index-names"))

        assert (await b.client.get("/api/v1/tickers")).status_code == 200
        await eventually_async(names_cached, what="index names in Redis")
    finally:
        await client.aclose()


async def test_changes_missed_while_the_control_channel_was_away_apply_on_its_return(
    replicas: tuple[Service, Service], ingest_bus: RedisBus
) -> None:
    a, b = replicas
    token = await a.sign_in("alice")
    async with (
        a.client_for(token) as on_a,
        open_stream(b.client_for(token), params={"timer": 0}) as stream,
    ):
        await stream.until("connected")
        control = b.runtime.control
        await control.stop()  # B hears nothing from here on
        response = await on_a.get("/api/v1/market/alice/create_order/eth_usd")
        assert response.status_code == 201, response.text
        assert all(not s.timers for s in b.runtime.hub.streams_of("alice"))

        subscriptions = b.runtime.subscriptions
        control.listen(subscriptions.apply_announced, subscriptions.resync_open_streams)
        await eventually(
            lambda: all("eth_usd" in s.timers for s in b.runtime.hub.streams_of("alice")),
            what="B's stream following the stored subscription",
        )
        tick = Tick("eth_usd", 3_333.0, now_ms() + 5)
        ingest_bus.publish(tick)
        await stream.until("price", ticker="eth_usd", timestamp=tick.timestamp)
        await on_a.get("/api/v1/market/alice/cancel_all_orders")


async def test_signing_out_on_a_ends_the_sessions_stream_on_b(
    replicas: tuple[Service, Service],
) -> None:
    a, b = replicas
    token = await a.sign_in("bob")
    other = await a.sign_in("bob")  # a second session of the same user keeps streaming
    async with (
        a.client_for(token) as on_a,
        open_stream(b.client_for(token)) as signed_out,
        open_stream(b.client_for(other)) as kept,
    ):
        await signed_out.until("connected")
        await kept.until("connected")
        assert (await on_a.delete("/api/v1/sessions/current")).status_code == 204
        with pytest.raises(EOFError):  # B ended it: a clean end of the response
            await signed_out.until("price", timeout=5)
        assert len(b.runtime.hub.streams_of("bob")) == 1  # the other session's stream stays
        await kept.until("status")


async def test_health_and_metrics_say_when_redis_nears_its_memory_limit(
    replicas: tuple[Service, Service], redis_server: RedisServer
) -> None:
    a, _ = replicas
    client = Redis.from_url(redis_server.url)
    try:
        health = (await a.client.get("/health")).json()
        assert health["cache"] == "ok", health
        used = (await client.info("memory"))["used_memory"]
        await client.config_set("maxmemory", str(int(used / 0.9)))  # 90 % full
        health = (await a.client.get("/health")).json()
        assert health["status"] == "degraded"
        assert health["cache"].startswith("near its memory limit: "), health
        metrics = (await a.client.get("/metrics")).text.splitlines()
        assert "cryptomarket_redis_memory_near_limit 1.0" in metrics
        assert any(line.startswith("cryptomarket_redis_memory_used_bytes ") for line in metrics)
    finally:
        await client.config_set("maxmemory", "0")
        await client.aclose()
    metrics = (await a.client.get("/metrics")).text.splitlines()
    assert "cryptomarket_redis_memory_near_limit 0.0" in metrics
    assert "cryptomarket_redis_memory_limit_bytes 0.0" in metrics
