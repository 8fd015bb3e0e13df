"""The whole distributed deployment on loopback, every part a real process.

PostgreSQL, Redis, the Deribit simulator, two `cryptomarket serve` replicas, two `cryptomarket
ingest` processes, a Celery worker and Celery beat. A client streams from replica B while it
subscribes through replica A; the leading ingest is SIGKILLed; Redis restarts; at the end every
tick the simulator sent for the watched tickers is in PostgreSQL (its primary key keeps each once),
and the client's stream got each price once, in order.
"""

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from redis.asyncio import Redis
from sqlalchemy import create_engine, text

from __tests__.distributed.processes import Process, Processes
from __tests__.helpers import eventually_async
from __tests__.servers import PostgresServer, RedisServer, free_port
from __tests__.sse import Event, Stream, open_stream
from cryptomarket.core.db import urls_for
from cryptomarket.core.migrate import upgrade
from cryptomarket.deribit.simulator import Simulator

pytestmark = pytest.mark.timeout(180)

TICK_INTERVAL = 0.2
LEADING = "leading: this process now holds the upstream connection"
WAITING = "another ingest process leads"


class Deployment:
    def __init__(self, processes: Processes, replicas: list[str], database_url: str) -> None:
        self.processes = processes
        self.replicas = replicas
        self.database_url = database_url


@pytest.fixture
async def deployment(
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    simulator_factory: Callable[..., Awaitable[Simulator]],
    tmp_path: Path,
) -> AsyncIterator[tuple[Deployment, Simulator]]:
    simulator = await simulator_factory(tick_interval=TICK_INTERVAL)
    name = f"deploy_{uuid.uuid4().hex[:10]}"
    postgres_server.create_database(name)
    database_url = postgres_server.url(database=name)
    upgrade(urls_for(database_url).sync_url)
    client = Redis.from_url(redis_server.url)
    await client.flushdb()
    await client.aclose()
    processes = Processes(
        tmp_path,
        {
            "DEBUG": "False",
            "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_server.url,
            "DERIBIT_WS_URL": simulator.url,
            "PROJECT_MODE": "testing",
            "DERIBIT_HEARTBEAT_INTERVAL": "1",
            "TRACKED_TICKERS": "btc_usd",
            "JOBS_PERSIST_INTERVAL": "0.5",
            "JOBS_GAP_INTERVAL": "2",
        },
    )
    try:
        ports = [free_port(), free_port()]
        for letter, port in zip("ab", ports, strict=True):
            processes.start(f"serve-{letter}", "-m", "cryptomarket", "serve", "--port", str(port))
        await processes.start("ingest-1", "-m", "cryptomarket", "ingest").logged(LEADING)
        await processes.start("ingest-2", "-m", "cryptomarket", "ingest").logged(WAITING)
        celery = ("-m", "celery", "-A", "cryptomarket.worker")
        processes.start("worker", *celery, "worker", "--pool=solo", "--loglevel=INFO")
        processes.start(
            "beat", *celery, "beat", "--loglevel=INFO", "--schedule", str(tmp_path / "beat")
        )
        replicas = [f"http://127.0.0.1:{port}" for port in ports]
        for base_url in replicas:
            await _healthy(base_url)
        yield Deployment(processes, replicas, database_url), simulator
    finally:
        processes.stop_all()
        if postgres_server.running:
            postgres_server.drop_database(name)


async def _healthy(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:

        async def ok() -> bool:
            try:
                response = await client.get("/health")
            except httpx.TransportError:
                return False
            body = response.json()
            return response.status_code == 200 and body["cache"] == "ok"

        await eventually_async(ok, timeout=30, what=f"{base_url} healthy")


def now_ms() -> int:
    return int(time.time() * 1000)


class Recorded:
    """A stream whose every event is kept, for checks on what the client received."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.events: list[Event] = []

    async def until(self, kind: str, timeout: float = 10.0, **match: Any) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.stream.next_event(timeout)
                self.events.append(event)
                if event.event == kind and all(event.data.get(k) == v for k, v in match.items()):
                    return event

    def prices(self, ticker: str) -> list[Event]:
        return [e for e in self.events if e.event == "price" and e.data["ticker"] == ticker]


async def next_tick_after(stream: Recorded, ticker: str, after_ms: int, timeout: float) -> int:
    """The timestamp of the first price of `ticker` newer than `after_ms`."""
    async with asyncio.timeout(timeout):
        while True:
            event = await stream.until("price", ticker=ticker)
            if event.data["timestamp"] > after_ms:
                return int(event.data["timestamp"])


async def test_replicas_ingest_failover_redis_restart_and_every_tick_stored_once(
    deployment: tuple[Deployment, Simulator], redis_server: RedisServer
) -> None:
    setup, simulator = deployment
    a_url, b_url = setup.replicas
    async with httpx.AsyncClient(base_url=a_url, timeout=10) as a:
        response = await a.post(
            "/api/v1/sessions",
            json={
                "user_id": "alice",
                "client_id": "sim-alice",
                "client_secret": "sim-alice-secret",
            },
        )
        assert response.status_code == 201, response.text
        headers = {"Authorization": f"Bearer {response.json()['token']}"}
        a.headers.update(headers)
        async with (
            httpx.AsyncClient(base_url=b_url, headers=headers, timeout=10) as b,
            open_stream(b) as opened,
        ):
            stream = Recorded(opened)
            await stream.until("connected")
            # Subscribed through A, delivered by B: eth_usd once a second, btc_usd every tick.
            for path in ("eth_usd?timer=1", "btc_usd?timer=0"):
                response = await a.get(f"/api/v1/market/alice/create_order/{path}")
                assert response.status_code == 201, response.text
            await stream.until("price", ticker="eth_usd")
            loop = asyncio.get_running_loop()
            spaced = []
            for _ in range(3):
                await stream.until("price", ticker="eth_usd")
                spaced.append(loop.time())
            gaps = [later - earlier for earlier, later in itertools.pairwise(spaced)]
            assert all(0.7 < gap < 1.5 for gap in gaps), gaps
            await next_tick_after(stream, "btc_usd", now_ms(), timeout=5)

            # The leader dies: the standby takes over and prices resume within 5 s.
            leader, standby = setup.processes.started[2], setup.processes.started[3]
            assert LEADING in leader.log() and LEADING not in standby.log()
            leader.kill()
            killed_at = now_ms()
            await next_tick_after(stream, "btc_usd", killed_at, timeout=5)
            assert LEADING in standby.log()

            # Redis restarts: the stream stays open and prices come again.
            await asyncio.to_thread(redis_server.restart)
            restarted_at = now_ms()
            await next_tick_after(stream, "btc_usd", restarted_at, timeout=20)
            await next_tick_after(stream, "eth_usd", restarted_at, timeout=10)
            health = (await b.get("/health")).json()
            assert health["cache"].startswith("ok"), health

    # What the client received, across the failover and the restart: each price once, in order.
    for ticker in ("btc_usd", "eth_usd"):
        prices = stream.prices(ticker)
        ids = [event.id for event in prices]
        assert len(ids) == len(set(ids)), f"{ticker}: an event id sent twice"
        stamps = [event.data["timestamp"] for event in prices]
        assert stamps == sorted(set(stamps)), f"{ticker}: prices out of order"
        assert len(stamps) > 3
    # btc_usd was asked for every tick: between its first and last price the stream got every
    # tick the simulator produced, or a gap event covering it.
    received = [event.data["timestamp"] for event in stream.prices("btc_usd")]
    gaps = [e.data for e in stream.events if e.event == "gap" and e.data["ticker"] == "btc_usd"]
    produced = [ts for ts, _ in simulator.produced("btc_usd", received[0], received[-1])]
    unaccounted = [
        ts
        for ts in produced
        if ts not in set(received) and not any(g["from"] <= ts <= g["to"] for g in gaps)
    ]
    assert unaccounted == [], f"btc_usd: {len(unaccounted)} tick(s) neither sent nor in a gap"

    await _every_tick_stored_once(setup, simulator, ("btc_usd", "eth_usd"), _processes_alive(setup))

    # The Celery worker's job runs show on a replica's /metrics (counted in Redis).
    async with httpx.AsyncClient(base_url=a_url, timeout=10) as a:
        metrics = (await a.get("/metrics")).text.splitlines()
    runs = 'cryptomarket_job_runs_total{job="persist_ticks"} '
    assert any(line.startswith(runs) and float(line.split()[-1]) >= 1 for line in metrics)


def _processes_alive(setup: Deployment) -> list[Process]:
    alive = [p for p in setup.processes.started if p.name != "ingest-1"]
    for process in alive:
        assert process.running, f"{process.name} died:\n{process.log()[-3000:]}"
    return alive


async def _every_tick_stored_once(
    setup: Deployment, simulator: Simulator, tickers: tuple[str, ...], _alive: list[Process]
) -> None:
    engine = create_engine(urls_for(setup.database_url).sync_url)
    try:
        for ticker in tickers:
            target = simulator.history(ticker)[-1][0]

            def caught_up(ticker: str = ticker, target: int = target) -> bool:
                with engine.connect() as connection:
                    newest = connection.execute(
                        text("SELECT max(timestamp) FROM crypto.price_tickers WHERE ticker = :t"),
                        {"t": ticker},
                    ).scalar()
                    gaps = connection.execute(
                        text("SELECT count(*) FROM crypto.price_gaps WHERE ticker = :t"),
                        {"t": ticker},
                    ).scalar()
                return newest is not None and newest >= target and gaps == 0

            async def stored(check: Callable[[], bool] = caught_up) -> bool:
                return await asyncio.to_thread(check)

            await eventually_async(stored, timeout=30, what=f"{ticker} stored up to {target}")
            with engine.connect() as connection:
                rows = connection.execute(
                    text(
                        "SELECT timestamp, count(*) FROM crypto.price_tickers "
                        "WHERE ticker = :t GROUP BY timestamp ORDER BY timestamp"
                    ),
                    {"t": ticker},
                ).all()
            counts = {int(ts): int(count) for ts, count in rows}
            first = min(counts)
            sent = {ts for ts, _ in simulator.history(ticker) if first <= ts <= target}
            in_store = {ts for ts in counts if ts <= target}
            assert sent - in_store == set(), f"{ticker}: {len(sent - in_store)} tick(s) missing"
            assert in_store - sent == set(), f"{ticker}: ticks the simulator never sent"
            assert len(sent) > 5  # ticks across the failover and the restart, not a vacuous check
    finally:
        engine.dispose()
