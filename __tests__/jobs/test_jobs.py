"""The job functions against real PostgreSQL, Redis and the Deribit simulator."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from redis import Redis
from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import OperationalError

from __tests__.app_server import app_settings
from __tests__.servers import PostgresServer, RedisServer
from cryptomarket.core.db import create_sync_engine, urls_for
from cryptomarket.core.migrate import upgrade
from cryptomarket.core.tables import Tables, build_tables
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.instruments.store_interval import StoreInterval
from cryptomarket.jobs import gaps, persist, profiles, retention, sessions
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.prices.repository import store_ticks
from cryptomarket.streaming.redis_bus import TICKS_STREAM, pack
from cryptomarket.users.secrets import SecretBox

TABLES: Tables = build_tables("postgresql")
DAY = timedelta(days=1)


@pytest.fixture
def engine(postgres_server: PostgresServer) -> Iterator[Engine]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    postgres_server.create_database(name)
    url = urls_for(postgres_server.url(database=name)).sync_url
    upgrade(url)
    engine = create_sync_engine(url)
    yield engine
    engine.dispose()
    postgres_server.drop_database(name)


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[Redis]:
    client = Redis.from_url(redis_server.url, socket_timeout=5)
    client.delete(
        TICKS_STREAM,
        "cryptomarket:job-lock:persist",
        persist.NEW_STREAM_KEY,
        persist.NEW_STREAM_CHECKED,
    )
    yield client
    client.delete(TICKS_STREAM, persist.NEW_STREAM_KEY, persist.NEW_STREAM_CHECKED)
    client.close()


def add_to_stream(redis: Redis, *events: Tick | Gap) -> None:
    for event in events:
        redis.xadd(TICKS_STREAM, {"event": pack(event)})


def stored(engine: Engine) -> list[tuple[str, int]]:
    ticks = TABLES.price_tickers.c
    with engine.connect() as connection:
        rows = connection.execute(select(ticks.ticker, ticks.timestamp).order_by(ticks.timestamp))
        return [(row.ticker, row.timestamp) for row in rows]


def test_persist_stores_every_tick_once_even_when_runs_overlap(
    engine: Engine, redis: Redis
) -> None:
    ticks = [Tick("btc_usd", 100.0 + i, 1_700_000_000_000 + i) for i in range(12_000)]
    add_to_stream(redis, *ticks[:6_000], ticks[10], *ticks[6_000:])  # one sent twice
    with ThreadPoolExecutor(2) as threads:
        list(threads.map(lambda _: persist.persist_ticks(redis, engine, TABLES), range(2)))
    persist.persist_ticks(redis, engine, TABLES)  # in case the lock made one of them skip
    assert stored(engine) == [("btc_usd", tick.timestamp) for tick in ticks]
    assert persist.persist_ticks(redis, engine, TABLES) == 0  # nothing new: nothing written


def test_a_killed_runs_lock_holds_the_next_runs_back_only_briefly_and_a_long_run_keeps_it(
    engine: Engine, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed mid-run never releases its lock: the next runs skip until it expires, so
    its lifetime must be short (here the chaos run's kill_worker stopped persisting for 120 s),
    and a run that takes longer than that lifetime must renew it batch after batch."""
    key = "cryptomarket:job-lock:persist"
    assert persist.LOCK_TTL <= 15  # what a killed worker costs in persisting
    monkeypatch.setattr(persist, "BATCH", 100)
    monkeypatch.setattr(persist, "LOCK_TTL", 0.3)
    add_to_stream(redis, *(Tick("btc_usd", 1.0, 1_700_000_000_000 + i) for i in range(500)))
    real_store = persist._store
    lifetimes: list[int] = []
    rivals: list[int] = []

    def slow_store(engine: Engine, tables: Tables, batch: persist.Batch) -> None:
        lifetimes.append(redis.pttl(key))
        time.sleep(0.15)  # five batches: 0.75 s, more than twice the lock's lifetime
        rivals.append(persist.persist_ticks(redis, engine, tables))
        real_store(engine, tables, batch)

    monkeypatch.setattr(persist, "_store", slow_store)
    assert persist.persist_ticks(redis, engine, TABLES) == 500
    assert rivals == [0] * 5  # every overlapping run skipped: the lock stayed held throughout
    assert 0 < max(lifetimes) <= 300
    assert redis.exists(key) == 0  # released at the end


def test_an_entry_read_but_not_acknowledged_is_stored_by_the_next_run(
    engine: Engine, redis: Redis
) -> None:
    add_to_stream(redis, Tick("eth_usd", 1.0, 1_700_000_000_000))
    persist.persist_ticks(redis, engine, TABLES)  # creates the group
    add_to_stream(redis, Tick("eth_usd", 2.0, 1_700_000_000_001))
    # A run that died after reading, before storing and acknowledging:
    redis.xreadgroup(persist.GROUP, persist.CONSUMER, {TICKS_STREAM: ">"}, count=10)
    persist.persist_ticks(redis, engine, TABLES)
    assert stored(engine) == [("eth_usd", 1_700_000_000_000), ("eth_usd", 1_700_000_000_001)]


def test_a_lost_stream_becomes_a_gap_and_gaps_in_the_stream_are_recorded(
    engine: Engine, redis: Redis
) -> None:
    add_to_stream(redis, Tick("btc_usd", 1.0, 1_000_000), Gap("btc_usd", 1_000_001, 1_000_500, "x"))
    persist.persist_ticks(redis, engine, TABLES)
    assert recorded_gaps(engine) == [(1_000_001, 1_000_500)]
    redis.delete(TICKS_STREAM)  # what a Redis restart does to it
    add_to_stream(redis, Tick("btc_usd", 2.0, 2_000_000))
    persist.persist_ticks(redis, engine, TABLES)
    # The lost span starts where the store stops: the gap recorded there is widened to it.
    assert recorded_gaps(engine) == [(1_000_001, 1_999_999)]
    assert stored(engine) == [("btc_usd", 1_000_000), ("btc_usd", 2_000_000)]


def test_a_new_stream_met_empty_is_still_recorded_as_lost_once_ticks_come(
    engine: Engine, redis: Redis
) -> None:
    add_to_stream(redis, Tick("btc_usd", 1.0, 1_000_000))
    persist.persist_ticks(redis, engine, TABLES)
    redis.delete(TICKS_STREAM)  # what a Redis restart does to it (and its group)
    assert persist.persist_ticks(redis, engine, TABLES) == 0  # meets the new stream empty
    add_to_stream(redis, Tick("btc_usd", 2.0, 2_000_000))
    persist.persist_ticks(redis, engine, TABLES)
    assert recorded_gaps(engine) == [(1_000_001, 1_999_999)]
    add_to_stream(redis, Tick("btc_usd", 3.0, 3_000_000))
    persist.persist_ticks(redis, engine, TABLES)  # the loss is recorded once, not again
    assert recorded_gaps(engine) == [(1_000_001, 1_999_999)]


def test_persist_stores_each_ticks_publish_stamp_as_its_received_at(
    engine: Engine, redis: Redis
) -> None:
    stamps = [datetime(2026, 5, 1, 12, 0, 0, 123_456 + i, tzinfo=UTC) for i in range(3)]
    add_to_stream(
        redis, *(Tick("eth_usd", 1.0, 1_000 + i, stamp) for i, stamp in enumerate(stamps))
    )
    persist.persist_ticks(redis, engine, TABLES)
    column = TABLES.price_tickers.c
    with engine.connect() as connection:
        rows = connection.execute(select(column.received_at).order_by(column.timestamp)).all()
    assert [row.received_at for row in rows] == stamps  # to the microsecond


def recorded_gaps(engine: Engine) -> list[tuple[int, int]]:
    column = TABLES.price_gaps.c
    with engine.connect() as connection:
        rows = connection.execute(select(column.from_ts, column.to_ts).order_by(column.from_ts))
        return [(row.from_ts, row.to_ts) for row in rows]


async def test_gap_backfill_fills_a_recorded_gap_from_deribit_and_forgets_it(
    engine: Engine, simulator_factory: Callable[..., Awaitable[Simulator]]
) -> None:
    simulator = await simulator_factory(tick_interval=0.02)
    await _ticks_of(simulator, "btc_usd", 20)
    history = simulator.history("btc_usd")
    start, end = history[3][0], history[-4][0]
    with engine.begin() as connection:
        connection.execute(
            insert(TABLES.price_gaps).values(
                ticker="btc_usd",
                from_ts=start,
                to_ts=end,
                reason="test",
                recorded_at=datetime.now(UTC),
            )
        )
    settings = app_settings(DERIBIT_WS_URL=simulator.url)
    filled = await asyncio.to_thread(gaps.backfill_gaps, settings, engine, TABLES)
    expected = [("btc_usd", ts) for ts, _ in history if start <= ts <= end]
    assert filled == len(expected)
    assert stored(engine) == expected
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(TABLES.price_gaps)).scalar() == 0


async def _ticks_of(simulator: Simulator, ticker: str, count: int) -> None:
    async with asyncio.timeout(10):
        while len(simulator.history(ticker)) < count:  # noqa: ASYNC110  # no event to await
            await asyncio.sleep(0.02)


def session(token_hash: str, *, expires_in: timedelta, revoked: bool = False) -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "token_hash": token_hash,
        "user_id": "u",
        "created_at": now,
        "expires_at": now + expires_in,
        "revoked_at": now if revoked else None,
    }


def test_prune_keeps_the_retention_and_purge_forgets_dead_sessions(engine: Engine) -> None:
    now = datetime.now(UTC)
    now_ms = int(time.time() * 1000)
    old, recent = now_ms - 3 * 86_400_000, now_ms - 3_600_000
    with engine.begin() as connection:
        store_ticks(connection, TABLES, [Tick("btc_usd", 1.0, ts, now) for ts in (old, recent)])
        connection.execute(
            insert(TABLES.person).values(
                user_id="u",
                client_id="c",
                client_secret_encrypted=b"x",
                created_at=now,
                updated_at=now,
            )
        )
        connection.execute(
            insert(TABLES.sessions),
            [
                session("live", expires_in=timedelta(hours=1)),
                session("expired", expires_in=timedelta(seconds=-1)),
                session("revoked", expires_in=timedelta(hours=1), revoked=True),
            ],
        )
    assert retention.prune_history(engine, TABLES, None) == 0
    assert retention.prune_history(engine, TABLES, 2) == 1
    assert stored(engine) == [("btc_usd", recent)]
    with engine.connect() as connection:
        candles = connection.execute(select(TABLES.price_candles.c.start)).scalars().all()
    assert sorted(candles) == [recent - recent % 3_600_000, recent - recent % 60_000]
    assert sessions.purge_sessions(engine, TABLES) == 2
    with engine.connect() as connection:
        left = connection.execute(select(TABLES.sessions.c.token_hash)).scalars().all()
    assert left == ["live"]


async def test_profile_refresh_authenticates_once_per_key_for_all_its_user_ids(
    engine: Engine, simulator: Simulator
) -> None:
    """Every authentication may count against Deribit's 16 sessions per key (reference 3.3)."""
    key = Fernet.generate_key().decode()
    secret = SecretBox([SecretStr(key)]).encrypt("sim-alice-secret")
    user_ids = ["alice", "alice-desk", "alice-bot"]
    with engine.begin() as connection:
        for n, user_id in enumerate(user_ids):
            signed_in(connection, n, user_id, "sim-alice", secret, fetched_at=None)
    settings = app_settings(DERIBIT_WS_URL=simulator.url, ENCRYPTION_KEYS=key)
    refreshed = await asyncio.to_thread(profiles.refresh_profiles, settings, engine, TABLES, None)
    assert refreshed == len(user_ids)
    assert simulator.calls["public/auth"] == 1
    with engine.connect() as connection:
        fetched = connection.execute(select(TABLES.person.c.profile_fetched_at)).scalars().all()
    assert len(fetched) == len(user_ids) and None not in fetched


def test_an_instruments_update_kept_by_a_run_that_failed_to_store_is_stored_by_the_next(
    engine: Engine, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's StoreInterval lives across runs: the first update of each window, chosen by
    # a run whose write failed (PostgreSQL restarting), must still be chosen when read again.
    interval = StoreInterval(1_000)
    fields = {"mark_price": 1.0}
    # Updates in two windows: each window's first must be chosen again, not only the newest's.
    stamps = (0, 500, 1_500, 1_700)
    updates = [Tick("BTC-PERPETUAL", 1.0, 1_700_000_000_000 + ms, fields=fields) for ms in stamps]
    add_to_stream(redis, *updates)
    real_store = persist._store

    def database_restarting(engine: Engine, tables: Tables, batch: persist.Batch) -> None:
        raise OperationalError("INSERT", {}, Exception("the database system is shutting down"))

    monkeypatch.setattr(persist, "_store", database_restarting)
    with pytest.raises(OperationalError):
        persist.persist_ticks(redis, engine, TABLES, interval)
    monkeypatch.setattr(persist, "_store", real_store)
    persist.persist_ticks(redis, engine, TABLES, interval)
    instruments = TABLES.instrument_ticks.c
    with engine.connect() as connection:
        rows = connection.execute(select(instruments.ticker, instruments.timestamp)).all()
    assert sorted(tuple(row) for row in rows) == [
        ("BTC-PERPETUAL", 1_700_000_000_000),
        ("BTC-PERPETUAL", 1_700_000_001_500),
    ]


def test_a_lost_stream_is_checked_for_every_ticker_not_only_the_first_batchs(
    engine: Engine, redis: Redis
) -> None:
    before = [Tick(ticker, 1.0, 1_000_000) for ticker in ("btc_usd", "eth_usd", "sol_usdc")]
    add_to_stream(redis, *before)
    persist.persist_ticks(redis, engine, TABLES)
    redis.delete(TICKS_STREAM)  # a Redis restart, with what was not stored yet
    add_to_stream(redis, Tick("btc_usd", 2.0, 1_005_000))  # persist runs before eth ticks
    persist.persist_ticks(redis, engine, TABLES)
    add_to_stream(redis, Tick("eth_usd", 2.0, 1_005_500))
    persist.persist_ticks(redis, engine, TABLES)
    assert recorded_gaps_of(engine) == [
        ("btc_usd", 1_000_001, 1_004_999),
        ("eth_usd", 1_000_001, 1_005_499),
    ]
    # Past the window, a ticker met for the first time was not ingested at the restart: its
    # span since the store's newest is no loss.
    add_to_stream(redis, Tick("btc_usd", 3.0, 1_005_000 + persist.NEW_STREAM_WINDOW_MS))
    persist.persist_ticks(redis, engine, TABLES)
    add_to_stream(redis, Tick("sol_usdc", 2.0, 2_000_000))
    persist.persist_ticks(redis, engine, TABLES)
    assert [gap[0] for gap in recorded_gaps_of(engine)] == ["btc_usd", "eth_usd"]


def recorded_gaps_of(engine: Engine) -> list[tuple[str, int, int]]:
    column = TABLES.price_gaps.c
    with engine.connect() as connection:
        rows = connection.execute(
            select(column.ticker, column.from_ts, column.to_ts).order_by(column.ticker)
        )
        return [(row.ticker, row.from_ts, row.to_ts) for row in rows]


async def test_a_gap_widened_while_the_gap_job_fills_it_keeps_its_widened_span(
    engine: Engine,
    simulator_factory: Callable[..., Awaitable[Simulator]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The writer, recovering from a long database outage, widens the gap it recorded (same
    # start, later end) while the job fetches history for the span it read: the job must not
    # replace the row by what it filled, or the widened part is neither stored nor a gap.
    simulator = await simulator_factory(tick_interval=0.02)
    await _ticks_of(simulator, "btc_usd", 20)
    history = simulator.history("btc_usd")
    start, end = history[3][0], history[-4][0]
    widened = end + 600_000
    recorded = {"ticker": "btc_usd", "from_ts": start, "reason": "the write buffer was full"}
    with engine.begin() as connection:
        connection.execute(
            insert(TABLES.price_gaps).values(**recorded, to_ts=end, recorded_at=datetime.now(UTC))
        )
    fill = gaps.fill_window

    async def widening_meanwhile(*args: Any, **kwargs: Any) -> Any:
        filled = await fill(*args, **kwargs)
        with engine.begin() as connection:
            column = TABLES.price_gaps.c
            connection.execute(
                update(TABLES.price_gaps).where(column.from_ts == start).values(to_ts=widened)
            )
        return filled

    monkeypatch.setattr(gaps, "fill_window", widening_meanwhile)
    settings = app_settings(DERIBIT_WS_URL=simulator.url)
    await asyncio.to_thread(gaps.backfill_gaps, settings, engine, TABLES)
    column = TABLES.price_gaps.c
    with engine.connect() as connection:
        spans = connection.execute(select(column.from_ts, column.to_ts)).all()
    assert any(from_ts <= end + 1 and to_ts >= widened for from_ts, to_ts in spans), spans


async def test_keys_deribit_refuses_go_behind_the_others_and_hold_no_one_back(
    engine: Engine, simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two users deleted their Deribit keys; their profiles are the oldest. A run takes two
    # users: the refused ones must not be picked again and again while bob is never refreshed.
    monkeypatch.setattr(profiles, "USERS_PER_RUN", 2)
    key = Fernet.generate_key().decode()
    box = SecretBox([SecretStr(key)])
    now = datetime.now(UTC)
    users = {  # user id -> (client id, secret, profile age)
        "gone-1": ("sim-alice", "deleted-1", timedelta(hours=5)),
        "gone-2": ("sim-alice", "deleted-2", timedelta(hours=4)),
        "bob": ("sim-bob", "sim-bob-secret", timedelta(hours=3)),
    }
    with engine.begin() as connection:
        for n, (user_id, (client_id, secret, age)) in enumerate(users.items()):
            signed_in(connection, n, user_id, client_id, box.encrypt(secret), fetched_at=now - age)
    settings = app_settings(DERIBIT_WS_URL=simulator.url, ENCRYPTION_KEYS=key)
    run = profiles.refresh_profiles
    assert await asyncio.to_thread(run, settings, engine, TABLES, None) == 0  # both refused
    assert await asyncio.to_thread(run, settings, engine, TABLES, None) == 1  # bob's turn
    with engine.connect() as connection:
        column = TABLES.person.c
        bob = connection.execute(select(column.profile).where(column.user_id == "bob")).scalar()
    assert bob is not None and bob["username"] == "bob"
    assert await asyncio.to_thread(run, settings, engine, TABLES, None) == 0  # none due now
    assert simulator.calls["public/auth"] == 3  # each refused key once, bob's once


def signed_in(
    connection: Connection,
    n: int,
    user_id: str,
    client_id: str,
    secret: bytes,
    *,
    fetched_at: datetime | None,
) -> None:
    """A user with a stored key and a live session (its n-th), its profile fetched then."""
    now = datetime.now(UTC)
    connection.execute(
        insert(TABLES.person).values(
            user_id=user_id,
            client_id=client_id,
            client_secret_encrypted=secret,
            profile_fetched_at=fetched_at,
            created_at=now,
            updated_at=now,
        )
    )
    connection.execute(
        insert(TABLES.sessions).values(
            token_hash=f"{n}" * 64, user_id=user_id, created_at=now, expires_at=now + DAY
        )
    )
