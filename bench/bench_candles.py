"""Candles and CSV export on a big price table, each beside its baseline in the same run.

    .venv/bin/python -m bench.bench_candles                   # the issue's size: 10,000,000 ticks
    .venv/bin/python -m bench.bench_candles --rows 400000 --calls 20   # a quick run

The table of bench_history (2 tickers, one tick a second each), bulk-loaded, then its candles
rebuilt the way migration 0004 does (timed). Then, per database:

- a day of 1-minute candles (1,440) through `PriceService.candles`, beside the raw ticks of the
  same day read as `by-date` pages of 10,000 (what a client did before);
- a year of daily candles, beside the same candles computed from the raw ticks in one GROUP BY
  (what the rollups save);
- storing ticks with their candles (`store_ticks`, batches of 5,000), beside a bare INSERT;
- a CSV export of every ticker's whole history in turn (the whole table: `format=csv`'s
  generator, HTTP aside) in rows/s and RSS growth, beside reading the same rows on the bare
  driver without CSV.

Targets (issue #13): 1-minute day and daily year p99 <= 20 ms on PostgreSQL and <= 50 ms on
SQLite; storing >= 20,000 ticks/s with rollups; export >= 500,000 rows/s with RSS growth < 20 MB.
"""

# ruff: noqa: S101, S608

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import insert, text

from bench.bench_history import DAY, T0, load_postgres, load_sqlite, seconds_for
from bench.common import (
    TICKERS,
    KnownTickers,
    LoadWatch,
    Report,
    exit_on_sigterm,
    fmt,
    latency_summary,
    postgres_server,
    stopwatch,
    temporary_dir,
)
from cryptomarket.app import settle_heap
from cryptomarket.core.db import Database, create_sync_engine
from cryptomarket.core.migrate import upgrade
from cryptomarket.prices import export
from cryptomarket.prices.dates import from_ms
from cryptomarket.prices.models import Tick
from cryptomarket.prices.repository import store_ticks, tick_rows
from cryptomarket.prices.rollups import HOUR_MS, MINUTE_MS, rebuild_candles
from cryptomarket.prices.service import PriceService

TARGET_MS = {"postgresql": 20.0, "sqlite": 50.0}
STORE_TARGET = 20_000
EXPORT_TARGET = 500_000
EXPORT_RSS_MB = 20


def iso(ms: int) -> str:
    return from_ms(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


async def timed(call: Callable[[int], Awaitable[Any]], calls: int) -> dict[str, float]:
    for i in range(3):
        await call(-1 - i)
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - start)
    return latency_summary(samples)


async def measure(database: Database, rows: int, calls: int, rng_seed: int) -> list[list[str]]:
    service = PriceService(database, KnownTickers(), always_known=TICKERS)  # type: ignore[arg-type]
    span_days = max(seconds_for(rows) // DAY, 1)
    dialect = database.dialect
    results: list[list[str]] = []
    settle_heap()  # as `cryptomarket serve` does once started (full collections cost 60+ ms)

    def day_window(i: int) -> tuple[str, int]:
        ticker = TICKERS[i % len(TICKERS)]
        return ticker, (T0 + (abs(i) * 7919 + rng_seed) % span_days * DAY) * 1000

    async def minute_day(i: int) -> None:
        ticker, start = day_window(i)
        page = await service.candles(
            ticker,
            resolution="1",
            start_date=iso(start),
            end_date=iso(start + DAY * 1000 - 1),
            limit=10_000,
            cursor=None,
        )
        assert len(page.items) == 1440 or span_days * DAY > seconds_for(rows), len(page.items)

    async def raw_day(i: int) -> None:
        ticker, start = day_window(i)
        cursor = None
        while True:
            page = await service.between(
                ticker,
                start_date=iso(start),
                end_date=iso(start + DAY * 1000 - 1),
                limit=10_000,
                cursor=cursor,
            )
            if (cursor := page.next_cursor) is None:
                return

    async def daily_year(i: int) -> None:
        page = await service.candles(
            TICKERS[i % len(TICKERS)],
            resolution="1D",
            start_date=iso(T0 * 1000),
            end_date=iso((T0 + 365 * DAY) * 1000),
            limit=10_000,
            cursor=None,
        )
        assert len(page.items) >= min(span_days, 365)

    table = "crypto.price_tickers" if dialect == "postgresql" else "crypto_price_tickers"
    raw_daily_sql = text(
        f"SELECT timestamp / 86400000 AS day, min(timestamp), max(timestamp), max(price), "
        f"min(price), count(*) FROM {table} WHERE ticker = :t AND timestamp >= :a AND "
        f"timestamp < :b GROUP BY day ORDER BY day"
    )

    async def raw_daily_year(i: int) -> None:
        async with database.reading() as connection:
            await connection.execute(
                raw_daily_sql,
                {"t": TICKERS[i % len(TICKERS)], "a": T0 * 1000, "b": (T0 + 365 * DAY) * 1000},
            )

    for name, product, baseline, baseline_name, baseline_calls in (
        ("a day of 1-minute candles", minute_day, raw_day, "by-date pages of the day", calls),
        ("a year of daily candles", daily_year, raw_daily_year, "GROUP BY over the ticks", 3),
    ):
        ours = await timed(product, calls)
        theirs = await timed(baseline, baseline_calls)
        target = TARGET_MS[dialect]
        print(f"  {dialect} {name}: p99 {ours['p99']:.2f} ms; {baseline_name} {theirs['p50']:.1f}")
        results.append(
            [
                dialect,
                name,
                fmt(ours["p50"]),
                fmt(ours["p99"]),
                f"{baseline_name}: p50 {fmt(theirs['p50'])}",
                f"<= {target:.0f} ms",
                "met" if ours["p99"] <= target else "MISSED",
            ]
        )
    results.append(await store_rate(database))
    results.append(await export_rate(database, rows))
    return results


async def store_rate(database: Database) -> list[str]:
    engine = create_sync_engine(database.urls.sync_url)
    now = datetime.now(UTC)
    start_ms = (T0 - 400 * DAY) * 1000  # before the loaded history: nothing collides
    try:
        rates = {}
        for mode in ("bare INSERT", "store_ticks"):
            ticks = [
                Tick(f"{mode[:4].strip()}{i % 20}_usd", 100.0 + i % 97, start_ms + i * 50, now)
                for i in range(200_000)
            ]
            with stopwatch() as elapsed:
                for i in range(0, len(ticks), 5_000):
                    with engine.begin() as connection:
                        batch = ticks[i : i + 5_000]
                        if mode == "store_ticks":
                            store_ticks(connection, database.tables, batch)
                        else:
                            connection.execute(
                                insert(database.tables.price_tickers), tick_rows(batch)
                            )
            rates[mode] = len(ticks) / elapsed[0]
    finally:
        engine.dispose()
    ours = rates["store_ticks"]
    print(f"  {database.dialect} store: {ours:,.0f} ticks/s; bare {rates['bare INSERT']:,.0f}")
    return [
        database.dialect,
        "storing ticks with their candles (ticks/s)",
        f"{ours:,.0f}",
        "-",
        f"bare INSERT: {rates['bare INSERT']:,.0f}",
        f">= {STORE_TARGET:,}",
        "met" if ours >= STORE_TARGET else "MISSED",
    ]


async def export_rate(database: Database, rows: int) -> list[str]:
    """Every ticker's whole history exported in turn (all the table's rows), RSS sampled."""
    process = psutil.Process()
    before = process.memory_info().rss
    peak = before
    count = chunks = 0
    with stopwatch() as elapsed:
        for ticker in TICKERS:
            async for chunk in export.tick_csv(database, ticker, 0, 2**62):
                count += chunk.count(b"\n") - (chunks == 0)  # not the header
                chunks += 1
                if chunks % 16 == 0:  # a few hundred samples over the export
                    peak = max(peak, process.memory_info().rss)
            chunks = 0
    exported = count
    rate = exported / elapsed[0]
    growth_mb = (peak - before) / 2**20
    baseline = sum([await bare_read(database, ticker) for ticker in TICKERS]) / len(TICKERS)
    print(f"  {database.dialect} export: {rate:,.0f} rows/s, RSS +{growth_mb:.1f} MB")
    verdict = rate >= EXPORT_TARGET and growth_mb < EXPORT_RSS_MB
    return [
        database.dialect,
        f"CSV export of {exported:,} rows (rows/s; RSS growth)",
        f"{rate:,.0f}",
        f"+{growth_mb:.1f} MB",
        f"bare driver read, no CSV: {baseline:,.0f} rows/s",
        f">= {EXPORT_TARGET:,}/s, < {EXPORT_RSS_MB} MB",
        "met" if verdict else "MISSED",
    ]


async def bare_read(database: Database, ticker: str) -> float:
    if database.dialect == "sqlite":
        path = database.urls.sync_url.database
        assert path is not None
        sqlite = sqlite3.connect(path)
        with stopwatch() as elapsed:
            count = sum(
                1
                for _ in sqlite.execute(
                    "SELECT timestamp, price FROM crypto_price_tickers WHERE ticker = ? "
                    "ORDER BY timestamp",
                    (ticker,),
                )
            )
        sqlite.close()
        return count / elapsed[0]
    async with database.reading() as connection:
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection
        count = 0
        with stopwatch() as elapsed:
            async with driver.transaction():
                async for _ in driver.cursor(
                    "SELECT timestamp, price FROM crypto.price_tickers WHERE ticker = $1 "
                    "ORDER BY timestamp",
                    ticker,
                    prefetch=10_000,
                ):
                    count += 1
        return count / elapsed[0]


def rebuild(database: Database) -> float:
    engine = create_sync_engine(database.urls.sync_url)
    try:
        with stopwatch() as elapsed, engine.begin() as connection:
            for width in (MINUTE_MS, HOUR_MS):
                connection.execute(rebuild_candles(database.tables, database.dialect, width))
    finally:
        engine.dispose()
    return elapsed[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="ticks in the table")
    parser.add_argument("--calls", type=int, default=100, help="timed calls per series")
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    exit_on_sigterm()
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    report = Report("candles", "Candles and CSV export, beside their baselines")
    busy = LoadWatch.busy_processes()
    report.text(
        f"{args.rows:,} ticks ({len(TICKERS)} tickers, one a second each). Other busy processes "
        "at the start: " + ("; ".join(busy) if busy else "none")
    )
    rows: list[list[str]] = []
    notes: list[str] = []

    def run(database: Database) -> None:
        seconds = rebuild(database)
        notes.append(
            f"{database.dialect}: candles rebuilt from {args.rows:,} ticks in {seconds:.1f} s"
        )
        print("  " + notes[-1], flush=True)

        async def measured() -> list[list[str]]:
            try:
                return await measure(database, args.rows, args.calls, args.seed)
            finally:
                await database.dispose()

        rows.extend(asyncio.run(measured()))

    with temporary_dir("bench-candles-") as tmp:
        if "postgresql" in databases:
            with postgres_server(tmp / "pg") as server:
                server.create_database("candles")
                report.postgres_version = server.psql("SHOW server_version")
                database = Database(server.url("postgresql+psycopg", "candles"))
                upgrade(database.urls.sync_url)
                print("loading PostgreSQL...", flush=True)
                load_postgres(database, args.rows, args.seed, 100_000)
                run(database)
        if "sqlite" in databases:
            path = tmp / "candles.sqlite3"
            database = Database(f"sqlite:///{path}")
            upgrade(database.urls.sync_url)
            print("loading SQLite...", flush=True)
            load_sqlite(path, args.rows, args.seed, 100_000)
            run(database)
    report.text("\n".join(f"- {note}" for note in notes))
    report.table(
        ("database", "what", "p50 ms / rate", "p99 ms", "baseline (same run)", "target", "verdict"),
        rows,
    )
    busy = LoadWatch.busy_processes()
    report.text("Other busy processes at the end: " + ("; ".join(busy) if busy else "none"))
    report.write(args.output)


if __name__ == "__main__":
    main()
