"""Ingest: sustained ticks per second into each database through the real write path.

    .venv/bin/python -m bench.bench_ingest                      # 1,000,000 ticks into PostgreSQL,
                                                                # 300,000 into SQLite
    .venv/bin/python -m bench.bench_ingest --postgres-ticks 100000 --sqlite-ticks 50000  # quick

Ticks of 2 tickers (1 per second each, interleaved as Deribit sends them) are built up front, then
pushed through `TickWriter.add` (default batch size, flush interval and buffer bound) as fast as
the writer takes them: the producer adds 1,000 at a time, yields to the event loop, and waits
while more than half the buffer bound is queued, so nothing is dropped (checked). Rate = ticks /
(first `add` .. `flush()` returned), into an empty migrated table.

Baseline, measured in the same run on its own fresh table: `PriceRepository.add_ticks` of the
same batches, one transaction each, no writer. The ratio writer / baseline is the writer's cost.
Target (issue): >= 20,000 ticks/s into PostgreSQL.

`--instruments`: the same for instrument ticks (BTC-PERPETUAL and ETH-PERPETUAL updating ten
times a second, each with a perpetual's fields as Deribit sends them), every update stored
(INSTRUMENT_STORE_INTERVAL_MS=0, the heaviest setting), into instrument_ticks; writes
bench/results/ingest-instruments.md. The PostgreSQL server is the test suite's
throwaway one: fsync, synchronous_commit and full_page_writes are OFF, so commits cost less than
on a durable production server. Writes bench/results/ingest.md.
"""

# ruff: noqa: S101, PLR0915, ASYNC110  (asserts check the run; the producer polls on purpose)

from __future__ import annotations

import argparse
import asyncio
import cProfile
import inspect
import io
import itertools
import pstats
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import func, select

from bench.common import (
    TICKERS,
    LoadWatch,
    Report,
    exit_on_sigterm,
    fmt,
    percentile,
    postgres_server,
    postgres_settings,
    temporary_dir,
)
from cryptomarket.core.db import Database
from cryptomarket.core.migrate import upgrade
from cryptomarket.prices.models import Tick
from cryptomarket.prices.repository import PriceRepository
from cryptomarket.prices.writer import TickWriter

T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
INSTRUMENT_RUN = False  # --instruments
TARGET = {"postgresql": 20_000.0}
PRODUCER_CHUNK = 1_000
DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(TickWriter.__init__).parameters.items()
    if p.default is not inspect.Parameter.empty
}


INSTRUMENTS = ("BTC-PERPETUAL", "ETH-PERPETUAL")


def make_instrument_ticks(count: int) -> list[Tick]:
    """`count` instrument updates: each instrument ten times a second, with its fields."""
    ticks: list[Tick] = []
    mark = {"BTC-PERPETUAL": 42_000.0, "ETH-PERPETUAL": 2_300.0}
    step = 0
    while len(ticks) < count:
        ms = T0 * 1000 + step * 100
        received = datetime.fromtimestamp(ms / 1000 + 0.05, UTC)
        for name in INSTRUMENTS:
            if len(ticks) == count:
                break
            mark[name] += 0.5 if step % 7 < 4 else -0.5
            price = mark[name]
            fields = {
                "state": "open",
                "mark_price": price,
                "index_price": price - 12.5,
                "last_price": price + 0.5,
                "best_bid_price": price - 0.5,
                "best_ask_price": price + 0.5,
                "best_bid_amount": 117_660.0,
                "best_ask_amount": 186_520.0,
                "open_interest": 1_132_329_370.0,
                "min_price": round(price * 0.985, 1),
                "max_price": round(price * 1.015, 1),
                "settlement_price": 42_010.0,
                "estimated_delivery_price": price - 12.5,
                "current_funding": 0.0,
                "funding_8h": 0.00001742,
                "interest_value": 0.0028213400122472977,
                "stats": {
                    "high": 43_612.0,
                    "low": 41_277.5,
                    "price_change": 2.3275,
                    "volume": 11_897.27,
                    "volume_usd": 1_092_371_540.0,
                },
            }
            ticks.append(Tick(name, price, ms, received, fields))
        step += 1
    return ticks


def make_ticks(count: int) -> list[Tick]:
    """`count` ticks: every ticker once a second, received 250 ms after Deribit's timestamp."""
    ticks: list[Tick] = []
    price = {"btc_usd": 42_000.0, "eth_usd": 2_300.0}
    second = T0
    while len(ticks) < count:
        received = datetime.fromtimestamp(second + 0.25, UTC)
        for ticker in TICKERS:
            if len(ticks) == count:
                break
            price[ticker] += 0.5 if second % 7 < 4 else -0.5
            ticks.append(Tick(ticker, price[ticker], second * 1000, received))
        second += 1
    return ticks


@dataclass
class Run:
    path: str
    ticks: int
    seconds: float
    stored: int
    client_cpu: float  # seconds of this process
    server_cpu: float  # seconds of the database server's processes (PostgreSQL only)
    other_cores: float
    windows: list[float]  # ticks/s over ~1 s windows
    notes: str = ""

    @property
    def rate(self) -> float:
        return self.ticks / self.seconds


class CpuClock:
    """CPU seconds of this process and of its children (the PostgreSQL server) since start."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self._start = self._read()

    def _read(self) -> tuple[float, float]:
        own = self.me.cpu_times()
        children = 0.0
        for child in self.me.children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.Error:
                continue
            children += times.user + times.system
        return own.user + own.system, children

    def elapsed(self) -> tuple[float, float]:
        now = self._read()
        return now[0] - self._start[0], now[1] - self._start[1]


async def count_rows(database: Database) -> int:
    async with database.reading() as connection:
        ticks = (
            database.tables.instrument_ticks if INSTRUMENT_RUN else database.tables.price_tickers
        )
        return int(
            (await connection.execute(select(func.count()).select_from(ticks))).scalar() or 0
        )


async def sample_progress(
    read: Callable[[], int], out: list[tuple[float, int]], interval: float = 1.0
) -> None:
    while True:
        out.append((time.perf_counter(), read()))
        await asyncio.sleep(interval)


def window_rates(samples: list[tuple[float, int]]) -> list[float]:
    return [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples) if b[0] > a[0]]


async def through_writer(database: Database, ticks: list[Tick], watch: LoadWatch) -> Run:
    """The real write path: TickWriter with its defaults, until `flush()` returns."""
    writer = TickWriter(database, store_interval_ms=0)
    high_water = writer.max_buffer // 2
    progress: list[tuple[float, int]] = []
    first = watch.mark()
    clock = CpuClock()
    start = time.perf_counter()
    writer.start()
    sampler = asyncio.create_task(sample_progress(lambda: writer.written, progress))
    waits = 0
    try:
        add = writer.add
        for i in range(0, len(ticks), PRODUCER_CHUNK):
            for tick in ticks[i : i + PRODUCER_CHUNK]:
                add(tick)
            await asyncio.sleep(0)
            while writer.room_used >= high_water:
                waits += 1
                await asyncio.sleep(0.001)
        await writer.flush()
        elapsed = time.perf_counter() - start
        progress.append((time.perf_counter(), writer.written))
    finally:
        sampler.cancel()
        await writer.stop()
    client, server = clock.elapsed()
    other = watch.other_cores(first, watch.mark())
    assert writer.dropped == 0, f"the writer dropped {writer.dropped} ticks"
    assert writer.written == len(ticks), (writer.written, len(ticks))
    stored = await count_rows(database)
    return Run(
        f"TickWriter (batch_size={writer.batch_size}, flush_interval={writer.flush_interval})",
        len(ticks),
        elapsed,
        stored,
        client,
        server,
        other,
        window_rates(progress),
        f"producer waited {waits} times on a half-full buffer; dropped {writer.dropped}",
    )


async def through_repository(
    database: Database, ticks: list[Tick], batch_size: int, watch: LoadWatch
) -> Run:
    """The baseline: the same batches straight into PriceRepository.add_ticks."""
    progress: list[tuple[float, int]] = []
    written = 0
    first = watch.mark()
    clock = CpuClock()
    start = time.perf_counter()
    sampler = asyncio.create_task(sample_progress(lambda: written, progress))
    try:
        for i in range(0, len(ticks), batch_size):
            batch = ticks[i : i + batch_size]
            async with database.transaction() as connection:
                await PriceRepository(connection, database.tables).add_ticks(batch)
            written += len(batch)
        elapsed = time.perf_counter() - start
        progress.append((time.perf_counter(), written))
    finally:
        sampler.cancel()
    client, server = clock.elapsed()
    other = watch.other_cores(first, watch.mark())
    stored = await count_rows(database)
    return Run(
        f"PriceRepository.add_ticks, {batch_size} per transaction (baseline)",
        len(ticks),
        elapsed,
        stored,
        client,
        server,
        other,
        window_rates(progress),
    )


async def profile_writer(database: Database, ticks: list[Tick], top: int = 25) -> str:
    """cProfile of the writer path (client side only), the functions with most own time."""
    profiler = cProfile.Profile()
    writer = TickWriter(database)
    writer.start()
    profiler.enable()
    try:
        for i in range(0, len(ticks), PRODUCER_CHUNK):
            for tick in ticks[i : i + PRODUCER_CHUNK]:
                writer.add(tick)
            await asyncio.sleep(0)
            while writer.room_used >= writer.max_buffer // 2:
                await asyncio.sleep(0.001)
        await writer.flush()
    finally:
        profiler.disable()
        await writer.stop()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    # Keep the table, drop the preamble's file paths noise.
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(line.replace(str(Path.cwd()) + "/", "") for line in lines)


async def _in_loop(database: Database, work: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await work()
    finally:
        await database.dispose()  # the pool belongs to this event loop


def run_pair(
    make_database: Callable[[str], Database],
    ticks: list[Tick],
    batch_size: int,
    watch: LoadWatch,
    rounds: int,
) -> list[Run]:
    """Baseline and writer, each on a fresh migrated table, alternating for `rounds` rounds."""
    runs = []
    for number in range(1, rounds + 1):
        for kind in ("repository", "writer"):
            database = make_database(f"ingest_{kind}_{number}")
            upgrade(database.urls.sync_url)
            if kind == "writer":
                run = asyncio.run(
                    _in_loop(database, partial(through_writer, database, ticks, watch))
                )
            else:
                run = asyncio.run(
                    _in_loop(
                        database,
                        partial(through_repository, database, ticks, batch_size, watch),
                    )
                )
            print(
                f"  {database.dialect:10} {run.path:70} {run.rate:10,.0f} ticks/s "
                f"({run.seconds:.1f} s, other load {run.other_cores:.2f} cores)",
                flush=True,
            )
            runs.append(run)
    return runs


def report_database(
    report: Report, dialect: str, runs: list[Run], extra: str | None, profile: str | None
) -> list[list[str]]:
    name = "PostgreSQL" if dialect == "postgresql" else "SQLite"
    report.heading(name)
    if extra:
        report.text(f"Server settings: {extra}")
    baseline = [r for r in runs if "baseline" in r.path]
    # Best of the rounds: on this shared machine a slow run is another process's doing.
    base_rate = max(r.rate for r in baseline) if baseline else None
    rows = []
    for run in runs:
        windows = run.windows
        rows.append(
            [
                run.path,
                f"{run.ticks:,}",
                fmt(run.seconds, 1),
                f"{run.rate:,.0f}",
                f"{min(windows):,.0f}" if windows else "-",
                f"{percentile(windows, 50):,.0f}" if windows else "-",
                fmt(run.rate / base_rate) + "x" if base_rate else "-",
                f"{run.stored:,}",
                f"{run.client_cpu / run.seconds:.0%}",
                f"{run.server_cpu / run.seconds:.0%}" if dialect == "postgresql" else "-",
                fmt(run.other_cores),
            ]
        )
    report.table(
        (
            "path",
            "ticks",
            "seconds",
            "ticks/s",
            "slowest 1 s window",
            "median 1 s window",
            "rate / best baseline",
            "rows stored",
            "client CPU",
            "server CPU",
            "other load (cores)",
        ),
        rows,
    )
    notes = [f"- {r.path}: {r.notes}" for r in runs if r.notes]
    if notes:
        report.text("\n".join(notes))
    if profile:
        report.text(
            "Profile of the writer path (this process only; cProfile slows it down, so read the "
            "shares, not the times):"
        )
        report.code(profile)
    writer = [r.rate for r in runs if "baseline" not in r.path]
    base = [r.rate for r in baseline]
    target = TARGET.get(dialect)

    def spread(rates: list[float]) -> str:
        return f"{max(rates):,.0f} ({min(rates):,.0f} .. {max(rates):,.0f})" if rates else "-"

    return [
        [
            name,
            spread(writer),
            spread(base),
            fmt(max(writer) / max(base)) + "x" if base else "-",
            f">= {target:,.0f}" if target else "(none)",
            ("met" if min(writer) >= target else "MISSED") if target else "-",
        ]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres-ticks", type=int, default=1_000_000)
    parser.add_argument("--sqlite-ticks", type=int, default=300_000)
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument(
        "--rounds", type=int, default=2, help="baseline + writer pairs per database"
    )
    parser.add_argument(
        "--profile-ticks",
        type=int,
        default=200_000,
        help="ticks of an extra, profiled writer run per database (0: no profile)",
    )
    parser.add_argument("--output", type=Path, default=None, help="default bench/results/ingest.md")
    parser.add_argument(
        "--instruments", action="store_true", help="instrument ticks, every update stored"
    )
    args = parser.parse_args()
    global INSTRUMENT_RUN  # noqa: PLW0603  # one kind per run: count_rows counts its table
    make = make_instrument_ticks if args.instruments else make_ticks
    if args.instruments:
        INSTRUMENT_RUN = True
        if args.postgres_ticks == parser.get_default("postgres_ticks"):
            args.postgres_ticks = 300_000
        if args.sqlite_ticks == parser.get_default("sqlite_ticks"):
            args.sqlite_ticks = 100_000
    exit_on_sigterm()
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    batch_size = DEFAULTS["batch_size"]

    report = (
        Report("ingest-instruments", "Ingest of instrument ticks (every update stored)")
        if args.instruments
        else Report("ingest", "Ingest: sustained ticks per second through TickWriter")
    )
    watch = LoadWatch()
    busy = LoadWatch.busy_processes()
    report.text(
        f"TickWriter defaults: {', '.join(f'{k}={v}' for k, v in DEFAULTS.items() if v)}. "
        "Rates are end to end: first `add` to `flush()` returned (writer), or first to last "
        'commit (baseline); "1 s window" rates come from a progress sample every second. '
        "client CPU / server CPU: CPU time of this process / of the PostgreSQL server over the "
        'run\'s wall time (100% = one core). "other load": CPU other processes on this shared '
        "2-core machine used meanwhile.\n\n"
        "Other busy processes at the start: " + ("; ".join(busy) if busy else "none")
    )
    verdicts: list[list[str]] = []
    phases: list[tuple[str, float]] = []
    with temporary_dir("bench-ingest-") as tmp:
        if "postgresql" in databases:
            started = time.monotonic()
            ticks = make(args.postgres_ticks)
            with postgres_server(tmp / "pg") as server:
                report.postgres_version = server.psql("SHOW server_version")

                def make_pg(name: str) -> Database:
                    server.create_database(name)
                    return Database(server.url("postgresql+psycopg", name))

                print("PostgreSQL...", flush=True)
                runs = run_pair(make_pg, ticks, batch_size, watch, args.rounds)
                profile = None
                if args.profile_ticks:
                    database = make_pg("ingest_profile")
                    upgrade(database.urls.sync_url)
                    part = ticks[: args.profile_ticks]
                    profile = asyncio.run(
                        _in_loop(database, partial(profile_writer, database, part))
                    )
                settings = postgres_settings(server)
            del ticks
            verdicts += report_database(report, "postgresql", runs, settings, profile)
            phases.append(("PostgreSQL", time.monotonic() - started))
        if "sqlite" in databases:
            started = time.monotonic()
            ticks = make(args.sqlite_ticks)

            def make_sqlite(name: str) -> Database:
                return Database(f"sqlite:///{tmp / name}.sqlite3")

            print("SQLite...", flush=True)
            runs = run_pair(make_sqlite, ticks, batch_size, watch, args.rounds)
            profile = None
            if args.profile_ticks:
                database = make_sqlite("ingest_profile")
                upgrade(database.urls.sync_url)
                part = ticks[: args.profile_ticks]
                profile = asyncio.run(_in_loop(database, partial(profile_writer, database, part)))
            del ticks
            mode = sqlite3.connect(tmp / "ingest_writer_1.sqlite3").execute("PRAGMA journal_mode")
            pragmas = f"journal_mode={mode.fetchone()[0]}, synchronous=NORMAL (the product's)"
            verdicts += report_database(report, "sqlite", runs, pragmas, profile)
            phases.append(("SQLite", time.monotonic() - started))
    busy = LoadWatch.busy_processes()
    report.text("Other busy processes at the end: " + ("; ".join(busy) if busy else "none"))

    report.heading("Targets")
    report.table(
        (
            "database",
            "writer ticks/s: best (range)",
            "baseline ticks/s: best (range)",
            "writer / baseline (best)",
            "target ticks/s",
            "verdict (slowest writer run)",
        ),
        verdicts,
    )
    report.text("Phase times: " + "; ".join(f"{name} {sec:.0f} s" for name, sec in phases))
    report.write(args.output)


if __name__ == "__main__":
    main()
