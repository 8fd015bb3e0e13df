"""The Celery workers as docker-compose.yml runs them: persistence goes on during a long job.

The workers and beat are started with the compose file's own commands, against PostgreSQL, Redis
and the simulator. A recorded gap gives the gap backfill Deribit work, and the simulator answers
every request only after LATENCY_MS, so that job runs for well over ten seconds; meanwhile ticks
published on the Redis bus (as the ingest process does) must reach the database within
PERSIST_BOUND seconds. With one worker for every job they waited until the backfill ended.
"""

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet
from redis.asyncio import Redis
from sqlalchemy import Engine, create_engine, func, select

from __tests__.deploy.files import COMPOSE_FILE
from __tests__.distributed.processes import Processes
from __tests__.helpers import eventually
from __tests__.servers import PostgresServer, RedisServer
from __tests__.simulated import sim_control
from cryptomarket.core.db import urls_for
from cryptomarket.core.migrate import upgrade
from cryptomarket.core.tables import build_tables
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.prices.repository import upsert_gap
from cryptomarket.streaming.redis_bus import RedisBus

pytestmark = pytest.mark.timeout(120)

LATENCY_MS = 8_000  # each answer of the simulator: the backfill needs at least two
PERSIST_BOUND = 5.0  # seconds from publishing a tick to finding it stored


def compose_command(service: str) -> list[str]:
    """The service's command from docker-compose.yml, run with this interpreter."""
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    command: list[str] = compose["services"][service]["command"]
    assert command[0] == "celery", command
    return ["-m", *command]


def celery_services() -> list[str]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return [
        name
        for name, service in compose["services"].items()
        if service.get("command", [None])[:4] == ["celery", "-A", "cryptomarket.worker", "worker"]
    ]


@pytest.fixture
async def database(postgres_server: PostgresServer) -> AsyncIterator[Engine]:
    name = f"queues_{uuid.uuid4().hex[:10]}"
    postgres_server.create_database(name)
    url = postgres_server.url(database=name)
    upgrade(urls_for(url).sync_url)
    engine = create_engine(urls_for(url).sync_url)
    try:
        yield engine
    finally:
        engine.dispose()
        if postgres_server.running:
            postgres_server.drop_database(name)


def stored_ticks(engine: Engine, ticker: str) -> int:
    table = build_tables("postgresql").price_tickers
    with engine.connect() as connection:
        count = connection.execute(
            select(func.count()).select_from(table).where(table.c.ticker == ticker)
        ).scalar()
    return int(count or 0)


def gaps_of(engine: Engine, ticker: str) -> int:
    table = build_tables("postgresql").price_gaps
    with engine.connect() as connection:
        count = connection.execute(
            select(func.count()).select_from(table).where(table.c.ticker == ticker)
        ).scalar()
    return int(count or 0)


async def test_ticks_are_persisted_while_a_long_maintenance_job_runs(
    database: Engine,
    redis_server: RedisServer,
    simulator_factory: Callable[..., Awaitable[Simulator]],
    tmp_path: Path,
) -> None:
    simulator = await simulator_factory()
    now = int(time.time() * 1000)
    with database.begin() as connection:  # a gap the backfill job must ask Deribit about
        connection.execute(
            upsert_gap(
                build_tables("postgresql"),
                "postgresql",
                Gap("btc_usd", now - 60_000, now - 30_000, "test"),
            )
        )
    client = Redis.from_url(redis_server.url)
    await client.flushdb()
    await sim_control(simulator, ("sim/set_latency", {"ms": LATENCY_MS}))
    processes = Processes(
        tmp_path,
        {
            "DEBUG": "False",
            "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "DATABASE_URL": database.url.render_as_string(hide_password=False),
            "REDIS_URL": redis_server.url,
            "DERIBIT_WS_URL": simulator.url,
            "PROJECT_MODE": "testing",
            "DERIBIT_REQUEST_TIMEOUT": "30",
            "JOBS_PERSIST_INTERVAL": "0.5",
            "JOBS_GAP_INTERVAL": "1",
        },
    )
    bus = RedisBus(client, backoff=lambda: Backoff(initial=0.1, maximum=1.0))
    bus.start(publishing=True, receiving=False)
    try:
        workers = celery_services()
        assert "persister" in workers, workers
        # The persister first, ready before any maintenance job can start, so the whole of
        # the long job below is spent persisting.
        persister = processes.start("persister", *compose_command("persister"))
        processes.start("beat", *compose_command("beat"), "--schedule", str(tmp_path / "beat"))
        await persister.logged(" ready.")
        started = {
            name: processes.start(name, *compose_command(name))
            for name in workers
            if name != "persister"
        }

        # The backfill job has opened its Deribit connection: from now on it waits at least
        # 2 x LATENCY_MS for answers (set_heartbeat, then the chart data).
        await eventually(
            lambda: simulator.calls["public/set_heartbeat"] >= 1,
            timeout=60,
            what="the gap backfill job talking to Deribit",
        )
        job_started = time.monotonic()
        for round_ in range(2):
            sent_at = time.monotonic()
            stamp = int(time.time() * 1000)
            for offset in range(5):
                bus.publish(Tick("eth_usd", 3500.0 + offset, stamp + offset))
            await eventually(
                lambda: stored_ticks(database, "eth_usd") == 5 * (round_ + 1),  # noqa: B023
                timeout=PERSIST_BOUND,
                what=f"round {round_}'s ticks stored within {PERSIST_BOUND}s of publishing",
            )
            assert time.monotonic() - sent_at < PERSIST_BOUND
        assert time.monotonic() - job_started < 2 * LATENCY_MS / 1000, "the job was not long"
        assert gaps_of(database, "btc_usd") == 1  # the backfill is still waiting for Deribit

        # And the maintenance job itself did finish, on its own worker.
        await sim_control(simulator, ("sim/set_latency", {"ms": 0}))
        await started["worker"].logged("gap backfill: 1 gap(s) looked at", timeout=60)
    finally:
        processes.stop_all()
        await bus.stop()
        await client.aclose()
