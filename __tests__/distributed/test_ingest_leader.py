"""`cryptomarket ingest` twice: one leads and publishes, the other waits and takes over."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from __tests__.app_server import app_settings
from __tests__.distributed.processes import Processes
from __tests__.helpers import eventually, eventually_async
from __tests__.servers import RedisServer, free_port
from __tests__.service import running_service
from __tests__.sse import open_stream
from cryptomarket.core.db import urls_for
from cryptomarket.core.migrate import upgrade
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.distributed import ingest_leader
from cryptomarket.distributed.connect import cancel_for_sure
from cryptomarket.distributed.ingest_leader import LEADER_KEY
from cryptomarket.prices.models import Tick
from cryptomarket.streaming.bus import Event
from cryptomarket.streaming.redis_bus import UPSTREAM_STATUS_KEY, RedisBus, latest_key, pack

LEADING = "leading: this process now holds the upstream connection"


@pytest.fixture
async def received(redis_server: RedisServer) -> AsyncIterator[list[Tick]]:
    """Every tick published on the bus, as a replica receives them."""
    client = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    await client.delete(LEADER_KEY)
    bus = RedisBus(client, backoff=lambda: Backoff(initial=0.05, maximum=0.3))
    ticks: list[Tick] = []

    def keep(event: Event, _frame: bytes | None) -> None:
        if isinstance(event, Tick):
            ticks.append(event)

    bus.subscribe(keep)
    bus.start(publishing=False)
    await eventually(lambda: bus.connected, what="listening to the bus")
    yield ticks
    await bus.stop()
    await client.aclose()


async def ingest_setting(
    simulator_factory: Callable[..., Awaitable[Simulator]], redis_server: RedisServer, path: Path
) -> tuple[Simulator, str, Processes]:
    """A simulator, a migrated SQLite store and the environment `cryptomarket ingest` runs in."""
    simulator = await simulator_factory(tick_interval=0.2)
    database_url = f"sqlite:///{path / 'store.sqlite3'}"
    upgrade(urls_for(database_url).sync_url)
    processes = Processes(
        path,
        {
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": database_url,
            "DERIBIT_WS_URL": simulator.url,
            "PROJECT_MODE": "testing",
            "DERIBIT_HEARTBEAT_INTERVAL": "1",
            "TRACKED_TICKERS": "btc_usd",
        },
    )
    return simulator, database_url, processes


async def test_the_standby_takes_over_within_seconds_of_the_leader_dying(
    simulator_factory: Callable[..., Awaitable[Simulator]],
    redis_server: RedisServer,
    received: list[Tick],
    tmp_path: Path,
) -> None:
    simulator, _store, processes = await ingest_setting(simulator_factory, redis_server, tmp_path)
    try:
        first = processes.start("ingest-1", "-m", "cryptomarket", "ingest")
        await first.logged(LEADING)
        second = processes.start("ingest-2", "-m", "cryptomarket", "ingest")
        await second.logged("another ingest process leads")
        await eventually(lambda: len(received) >= 10, what="ticks from the leader")

        # While one leads, only one publishes: no tick arrives twice.
        seen = [(tick.ticker, tick.timestamp) for tick in received]
        assert len(seen) == len(set(seen))

        first.kill()
        killed_at = int(time.time() * 1000)
        await second.logged(LEADING, timeout=5)
        await eventually(
            lambda: any(tick.timestamp > killed_at for tick in received),
            timeout=5,
            what="live ticks from the new leader",
        )
        # The ticks missed meanwhile are published too (backfilled from Deribit's history, which
        # may come after the first live tick).
        got = {tick.timestamp for tick in received if tick.ticker == "btc_usd"}
        first, newest = min(got), max(got)
        sent = {ts for ts, _ in simulator.history("btc_usd") if first <= ts <= newest}

        def missing() -> set[int]:
            return sent - {tick.timestamp for tick in received if tick.ticker == "btc_usd"}

        await eventually(lambda: not missing(), timeout=5, what="the missed ticks backfilled")
    finally:
        processes.stop_all()


async def test_a_replica_started_after_ingest_connected_knows_the_upstream_is_connected(
    simulator_factory: Callable[..., Awaitable[Simulator]],
    redis_server: RedisServer,
    received: list[Tick],
    tmp_path: Path,
) -> None:
    simulator, database_url, processes = await ingest_setting(
        simulator_factory, redis_server, tmp_path
    )
    try:
        ingest = processes.start("ingest", "-m", "cryptomarket", "ingest")
        await ingest.logged("upstream connected")
        await eventually(lambda: len(received) >= 3, what="ticks from the leader")
        # The change to `connected` was published before this replica existed.
        async with running_service(simulator, database_url, REDIS_URL=redis_server.url) as late:
            runtime = late.runtime
            await eventually(lambda: runtime.redis_bus.connected, what="replica subscribed")
            assert runtime.hub.upstream_state == "connected"
            health = (await late.client.get("/health")).json()
            assert health["upstream"] == "connected (via ingest)", health
            token = await late.sign_in("alice")
            async with open_stream(late.client_for(token)) as stream:
                status = await stream.until("status")
                assert status.data["upstream"] == "connected"

            # Redis restarts: the status is gone from it, and the leader writes it again.
            client = Redis.from_url(redis_server.url)
            try:
                await client.delete(UPSTREAM_STATUS_KEY)

                async def rewritten() -> bool:
                    return bool(await client.exists(UPSTREAM_STATUS_KEY))

                await eventually_async(rewritten, timeout=10, what="the status written again")
                # Kept only while a leader rewrites it: with none, it is gone within 30 s.
                assert 0 < await client.ttl(UPSTREAM_STATUS_KEY) <= 30
            finally:
                await client.aclose()
    finally:
        processes.stop_all()


async def test_a_leader_taking_over_with_the_store_away_goes_on_from_what_was_published(
    simulator_factory: Callable[..., Awaitable[Simulator]],
    redis_server: RedisServer,
    received: list[Tick],
    tmp_path: Path,
) -> None:
    # PostgreSQL restarts as the ingest takes the lead: the stored subscriptions are unknown.
    # The process must lead anyway (not crash-loop), and follow the tickers the last leader
    # published, so a user's eth_usd keeps flowing and is caught up from where it stopped.
    simulator, _store, processes = await ingest_setting(simulator_factory, redis_server, tmp_path)
    await eventually(lambda: len(simulator.history("eth_usd")) >= 5, what="eth_usd ticking")
    last_ts, last_price = simulator.history("eth_usd")[1]  # the last leader's newest
    client = Redis.from_url(redis_server.url)
    await client.set(latest_key("eth_usd"), pack(Tick("eth_usd", last_price, last_ts)))
    await client.aclose()
    away = f"postgresql://nobody@127.0.0.1:{free_port()}/gone"
    try:
        leader = processes.start("ingest-1", "-m", "cryptomarket", "ingest", DATABASE_URL=away)
        await leader.logged("stored subscriptions unknown")
        await leader.logged(LEADING)
        await eventually(
            lambda: {"btc_usd", "eth_usd"} <= {tick.ticker for tick in received},
            timeout=10,
            what="ticks of the tracked ticker and of the one published lately",
        )

        def missing() -> list[int]:
            got = {tick.timestamp for tick in received if tick.ticker == "eth_usd"}
            sent = [ts for ts, _ in simulator.history("eth_usd") if last_ts < ts <= max(got)]
            return [ts for ts in sent if ts not in got]

        await eventually(lambda: not missing(), timeout=10, what="caught up from its newest")
        assert leader.running
    finally:
        processes.stop_all()


async def test_a_lead_slow_to_set_up_keeps_its_lease(
    *,
    simulator_factory: Callable[..., Awaitable[Simulator]],
    redis_server: RedisServer,
    received: list[Tick],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Setting up takes longer than the lease (a cold store, many subscribed instruments): the
    # lease must be renewed meanwhile, or it expires and the process hands the lead around
    # without ever publishing.
    simulator, store, _processes = await ingest_setting(simulator_factory, redis_server, tmp_path)
    setting_up = ingest_leader._continue_from_published

    async def slowly(*args: Any) -> None:
        await asyncio.sleep(ingest_leader.LEASE_TTL + 1)
        await setting_up(*args)

    monkeypatch.setattr(ingest_leader, "_continue_from_published", slowly)
    settings = app_settings(
        REDIS_URL=redis_server.url,
        DATABASE_URL=store,
        DERIBIT_WS_URL=simulator.url,
        TRACKED_TICKERS="btc_usd",
    )
    leading = asyncio.create_task(ingest_leader.run_ingest(settings))
    try:
        await eventually(lambda: len(received) >= 3, timeout=15, what="ticks from the leader")
        assert "lost the lease" not in caplog.text
    finally:
        await cancel_for_sure([leading])
