"""Days of ticks through a Redis with exactly the compose file's memory settings, in minutes.

The real RedisBus publishes ticks stamped with a clock that advances one second per round (so
trimming by age sees days pass), the real lease is held and renewed the whole time, and the real
persist job stores the stream into SQLite from a thread, except during a stall that leaves far
more unstored ticks than fit. `PressureRun.check()` then asserts what issue 11 asks: no publish
or lease error, memory always below maxmemory, and every tick published either stored or inside
a recorded gap.

`make redis-week` runs the week of two tickers (1.2 million ticks): `python -m
__tests__.distributed.redis_pressure --days 7`.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from sqlalchemy import Engine, select

from __tests__.servers import RedisServer
from cryptomarket.core.db import create_sync_engine, urls_for
from cryptomarket.core.migrate import upgrade
from cryptomarket.core.tables import Tables, build_tables
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.distributed.leader import Lease
from cryptomarket.distributed.memory import read_memory
from cryptomarket.jobs import persist
from cryptomarket.prices.models import Tick
from cryptomarket.streaming.redis_bus import TICKS_STREAM, RedisBus

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
NOT_MEMORY = {"--requirepass", "--save", "--appendonly"}  # what the test server sets itself
START = 1_800_000_000.0  # the fake clock's first second (2027)
LEASE_KEY = "pressure:lease"
FLOW = 2_000  # events published ahead of the bus at most (the ingest ticks at Deribit's pace)
# Ticks published but neither stored nor cut into a gap, at most, outside the stall: in a real
# deployment the persist job keeps pace with Deribit's ticks, so the compressed clock waits for it
# (else a slow machine turns the whole run into a persist stall; 30,000 entries are ~7 MiB).
PERSIST_LAG = 30_000


def compose_memory_settings() -> list[str]:
    """The redis service's command-line options from docker-compose.yml, minus the password
    and persistence ones: its memory limit, policy and buffer limits, exactly."""
    command = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["redis"]["command"]
    assert command[0] == "redis-server", command
    options: list[list[str]] = []
    for arg in map(str, command[1:]):
        if arg.startswith("--"):
            options.append([arg])
        else:
            options[-1].append(arg)
    kept = [option for option in options if option[0] not in NOT_MEMORY]
    assert {"--maxmemory", "--maxmemory-policy"} <= {option[0] for option in kept}, kept
    return [arg for option in kept for arg in option]


class LimitedRedis(RedisServer):
    """A test Redis started with extra options (the compose file's memory settings)."""

    def __init__(self, base_dir: Path, options: list[str]) -> None:
        super().__init__(base_dir)
        self.options = options

    def _command(self) -> list[str]:
        return [*super()._command(), *self.options]


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class PressureRun:
    tickers: list[str]
    seconds: int  # simulated seconds, one tick per ticker per second
    stall: tuple[int, int]  # simulated seconds [from, to) in which the persist job is stopped
    published: dict[str, list[int]] = field(default_factory=dict)
    max_used: int = 0
    limit: int = 0
    lease_failures: list[str] = field(default_factory=list)
    persist_failures: list[str] = field(default_factory=list)
    publish_failures: int = 0
    trimmed_unstored: int = 0
    gaps_recorded: int = 0
    stream_first_ms: int = 0
    clock_ms: int = 0
    elapsed: float = 0.0
    persisted: int = 0  # ticks the persist job has written (written by its thread)

    @property
    def entries(self) -> int:
        return sum(map(len, self.published.values()))


Stall = tuple[threading.Event, threading.Event]  # (the persist job is to stop, it has stopped)


async def run_pressure(
    redis_url: str, engine: Engine, tables: Tables, run: PressureRun
) -> PressureRun:
    """Publish, hold the lease and persist as described above; fills in `run`."""
    started = time.monotonic()
    client = Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
    sync_client = SyncRedis.from_url(redis_url, socket_timeout=30)
    clock = FakeClock()
    bus = RedisBus(client, backoff=lambda: Backoff(initial=0.05, maximum=0.5), clock=clock)
    lease = Lease(client, LEASE_KEY, ttl=3.0)
    stalled, finished = threading.Event(), threading.Event()
    idle = threading.Event()  # the persist loop has seen the stall: no run is in progress
    run.published = {ticker: [] for ticker in run.tickers}
    run.limit = (await read_memory(client)).limit
    assert run.limit > 0, "the compose settings give Redis a maxmemory"
    await lease.acquire()  # (new to this Redis: held at once, to be led after a TTL)
    assert lease.valid, "the lease is free at the start"
    bus.start(receiving=False)
    watchers = [
        asyncio.create_task(_renew(lease, run, finished)),
        asyncio.create_task(_sample_memory(client, run, finished)),
    ]
    persisting = asyncio.create_task(
        asyncio.to_thread(
            _persist_loop, sync_client, (engine, tables), run, (stalled, idle), finished
        )
    )
    try:
        await _publish(bus, clock, run, (stalled, idle))
        await _until(lambda: bus.backlog == 0, what="the backlog published")
        stalled.clear()
        await asyncio.to_thread(_persist_all, sync_client, engine, tables)
        await bus.bounds.enforce()  # stored everything: now trimming by age alone applies
        info: dict[str, Any] = await client.xinfo_stream(TICKS_STREAM)
        run.stream_first_ms = int(info["first-entry"][0].split(b"-")[0])
        run.clock_ms = int(clock() * 1000)
        # Celery's broker and the cache can still write; the lease can be taken anew.
        await client.lpush("pressure:queue", b"x" * 1_000)
        await client.set("pressure:cache", b"y" * 1_000, ex=60)
        await lease.release()
        successor = Lease(client, LEASE_KEY, ttl=3.0)
        if not await successor.acquire():
            run.lease_failures.append("the released lease could not be taken again")
        await successor.release()
    finally:
        finished.set()
        await asyncio.gather(*watchers, persisting, return_exceptions=True)
        run.publish_failures = bus.failures
        run.trimmed_unstored = bus.bounds.trimmed_unstored
        run.gaps_recorded = bus.bounds.gaps_recorded
        await bus.stop()
        await client.aclose()
        sync_client.close()
    run.elapsed = time.monotonic() - started
    return run


async def _publish(
    bus: RedisBus,
    clock: FakeClock,
    run: PressureRun,
    stall: tuple[threading.Event, threading.Event],
) -> None:
    stalled, idle = stall
    for second in range(run.seconds):
        if second == run.stall[0]:
            stalled.set()
            # A run in progress would go on reading through the stall: wait until it ended.
            await asyncio.to_thread(idle.wait, 30)
        elif second == run.stall[1]:
            stalled.clear()
        stamp = int(clock() * 1000)
        for offset, ticker in enumerate(run.tickers):
            timestamp = stamp + offset  # each index ticks on its own ms
            bus.publish(Tick(ticker, 50_000.0 + second % 977, timestamp))
            run.published[ticker].append(timestamp)
        clock.now += 1.0
        if bus.backlog > FLOW:
            await _until(lambda: bus.backlog <= FLOW // 2, what="the bus keeping up")
        if not stalled.is_set() and _outstanding(bus, run) > PERSIST_LAG:
            await _until(
                lambda: _outstanding(bus, run) <= PERSIST_LAG // 2,
                what="the persist job keeping up",
            )


def _outstanding(bus: RedisBus, run: PressureRun) -> int:
    """Ticks published that are neither stored nor cut into a recorded gap yet."""
    return run.entries - run.persisted - bus.bounds.trimmed_unstored


async def _until(condition: Any, what: str, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110  # the bus's backlog has no event to await
            await asyncio.sleep(0.001)
    _ = what


async def _renew(lease: Lease, run: PressureRun, finished: threading.Event) -> None:
    while not finished.is_set():
        await asyncio.sleep(0.5)  # the leader renews on a period, like ingest_leader._keep
        if finished.is_set():
            return
        try:
            if not await lease.renew():
                run.lease_failures.append("renew answered: lost")
        except Exception as error:  # every failure is a finding
            run.lease_failures.append(f"renew failed: {error!r}")


async def _sample_memory(client: Redis, run: PressureRun, finished: threading.Event) -> None:
    while not finished.is_set():
        with contextlib.suppress(Exception):
            run.max_used = max(run.max_used, (await read_memory(client)).used)
        await asyncio.sleep(0.02)  # a sampler: memory has no event to await


def _persist_loop(
    redis: SyncRedis,
    store: tuple[Engine, Tables],
    run: PressureRun,
    stall: Stall,
    finished: threading.Event,
) -> None:
    """What Celery beat and the worker do: a persist run every moment, unless stalled."""
    stalled, idle = stall
    while not finished.wait(0.05):
        if stalled.is_set():
            idle.set()
            continue
        idle.clear()
        try:
            run.persisted += persist.persist_ticks(redis, *store)
        except Exception as error:  # every failure is a finding
            run.persist_failures.append(repr(error))


def _persist_all(redis: SyncRedis, engine: Engine, tables: Tables) -> None:
    """Run the persist job until the group has nothing left to read or acknowledge."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        persist.persist_ticks(redis, engine, tables)
        groups: Any = redis.xinfo_groups(TICKS_STREAM)
        group = next(g for g in groups if g["name"] in (b"persist", "persist"))
        stream: Any = redis.xinfo_stream(TICKS_STREAM)
        # (not `lag`: Redis counts entries cut before the group read them as unread)
        read_all = group["last-delivered-id"] == stream["last-generated-id"]
        if read_all and not group["pending"]:
            return
    raise AssertionError("the persist job did not catch up")


def check(run: PressureRun, engine: Engine, tables: Tables) -> list[str]:
    """What went wrong (empty: nothing). Every published tick is stored or inside a gap."""
    problems = []
    if run.publish_failures:
        problems.append(f"{run.publish_failures} publish round trip(s) failed")
    if run.lease_failures:
        problems.append(
            f"{len(run.lease_failures)} lease failure(s), first: {run.lease_failures[0]}"
        )
    if run.persist_failures:
        problems.append(
            f"{len(run.persist_failures)} persist run(s) failed: {run.persist_failures[0]}"
        )
    if not run.max_used < run.limit:
        problems.append(f"Redis used {run.max_used} bytes, its maxmemory is {run.limit}")
    stored, gaps = _stored(engine, tables)
    silently_lost = 0
    for ticker, timestamps in run.published.items():
        spans = sorted(gaps.get(ticker, []))
        starts = [start for start, _ in spans]
        have = stored.get(ticker, set())
        for timestamp in timestamps:
            if timestamp in have:
                continue
            index = bisect.bisect_right(starts, timestamp) - 1
            if index < 0 or spans[index][1] < timestamp:
                silently_lost += 1
    if silently_lost:
        problems.append(f"{silently_lost} tick(s) neither stored nor inside a recorded gap")
    if sum(map(len, stored.values())) < run.entries // 2:
        problems.append("fewer than half the ticks were stored")
    return problems


def _stored(engine: Engine, tables: Tables) -> tuple[dict[str, set[int]], dict[str, list]]:
    ticks, gaps = tables.price_tickers.c, tables.price_gaps.c
    stored: dict[str, set[int]] = {}
    recorded: dict[str, list[tuple[int, int]]] = {}
    with engine.connect() as connection:
        for ticker, timestamp in connection.execute(select(ticks.ticker, ticks.timestamp)):
            stored.setdefault(ticker, set()).add(int(timestamp))
        for ticker, low, high in connection.execute(select(gaps.ticker, gaps.from_ts, gaps.to_ts)):
            recorded.setdefault(ticker, []).append((int(low), int(high)))
    return stored, recorded


def sqlite_store(directory: Path) -> tuple[Engine, Tables]:
    url = urls_for(f"sqlite:///{directory / 'store.sqlite3'}").sync_url
    upgrade(url)
    return create_sync_engine(url), build_tables("sqlite")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--tickers", type=int, default=2)
    args = parser.parse_args()
    seconds = int(args.days * 86_400)
    tickers = ["btc_usd", "eth_usd", *(f"t{i}_usd" for i in range(args.tickers - 2))]
    run = PressureRun(tickers[: args.tickers], seconds, (seconds // 4, seconds // 4 + 60_000))
    with tempfile.TemporaryDirectory(prefix="redis-pressure-") as directory:
        server = LimitedRedis(Path(directory) / "redis", compose_memory_settings())
        server.start()
        engine, tables = sqlite_store(Path(directory))
        try:
            asyncio.run(run_pressure(server.url, engine, tables, run))
            problems = check(run, engine, tables)
        finally:
            engine.dispose()
            server.close()
    print(
        f"{run.entries:,} ticks ({args.days:g} days of {len(run.tickers)} tickers) in "
        f"{run.elapsed:.0f} s; Redis peak {run.max_used / 2**20:.1f} of {run.limit / 2**20:.0f} "
        f"MiB; {run.trimmed_unstored:,} unstored entries cut under memory pressure, recorded "
        f"as {run.gaps_recorded} gap(s)"
    )
    for problem in problems:
        print("FAILED:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
