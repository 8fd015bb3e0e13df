"""History reads on a big price table: a 1-day page of 1,000 rows, and `latest`.

    .venv/bin/python -m bench.bench_history                  # the issue's size: 10,000,000 ticks
    .venv/bin/python -m bench.bench_history --rows 200000 --calls 100   # a quick run

The table holds 2 tickers ticking once a second each (10M rows = ~58 days), bulk-loaded into the
migrated schema: PostgreSQL by COPY (psycopg, FREEZE) then ANALYZE, SQLite by executemany in one
transaction. Then, after a warm-up, `--calls` timed calls of each read at random points:

- `PriceService.between(ticker, 1-day window, limit=1000)` and `PriceService.latest(ticker)`:
  the product's read path as the HTTP routes use it (connection from the pool, SQL, rows,
  PricePoint models), which is what the targets are about;
- `PriceRepository` alone (pool + SQL + SQLAlchemy rows, no models), to split the cost;
- the baseline: the same SQL through the bare driver on one held connection (asyncpg, sqlite3).

It prints p50/p95/p99/max in ms with the ratio to the baseline, the plans (EXPLAIN ANALYZE on
PostgreSQL, EXPLAIN QUERY PLAN on SQLite), and writes bench/results/history.md. Targets (issue):
p99 <= 20 ms on PostgreSQL, <= 50 ms on SQLite. PostgreSQL is the test suite's throwaway server
(fsync off, default shared_buffers); the table is in the OS page cache, so these are warm reads.
"""

# ruff: noqa: S101, PLR0915, PLR0917

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event

from bench.common import (
    TICKERS,
    GcWatch,
    KnownTickers,
    LoadWatch,
    Report,
    exit_on_sigterm,
    fmt,
    latency_summary,
    postgres_server,
    postgres_settings,
    stopwatch,
    temporary_dir,
)
from cryptomarket.core.db import Database, create_sync_engine
from cryptomarket.core.migrate import upgrade
from cryptomarket.prices.dates import from_ms
from cryptomarket.prices.repository import PriceRepository
from cryptomarket.prices.service import PriceService

T0 = 1_704_067_200  # 2024-01-01T00:00:00Z, seconds
DAY = 86_400
PAGE = 1000
TARGET_P99_MS = {"postgresql": 20.0, "sqlite": 50.0}
START_PRICES = {"btc_usd": 42_000.0, "eth_usd": 2_300.0}


# The data: every ticker once a second, in arrival order (interleaved, as ingest writes them).


def seconds_for(rows: int) -> int:
    return math.ceil(rows / len(TICKERS))


def ticks(rows: int, seed: int) -> Iterator[tuple[str, int, float, str]]:
    """(ticker, timestamp ms, price, received_at as 'YYYY-MM-DD HH:MM:SS.ffffff' UTC)."""
    rng = random.Random(seed)
    gauss = rng.gauss
    prices = [START_PRICES.get(ticker, 100.0) for ticker in TICKERS]
    produced = 0
    day_start = -1
    day = ""
    for second in range(T0, T0 + seconds_for(rows)):
        if second - day_start >= DAY:
            day_start = second - second % DAY
            day = time.strftime("%Y-%m-%d", time.gmtime(day_start))
        s = second - day_start
        received = f"{day} {s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.250000"
        timestamp = second * 1000
        for i, ticker in enumerate(TICKERS):
            price = prices[i] = prices[i] * (1.0 + gauss(0.0, 2e-4))
            yield ticker, timestamp, round(price, 2), received
            produced += 1
            if produced == rows:
                return


def chunks(rows: int, seed: int, size: int) -> Iterator[list[tuple[str, int, float, str]]]:
    chunk: list[tuple[str, int, float, str]] = []
    for row in ticks(rows, seed):
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# Loading.


@dataclass
class Loaded:
    rows: int
    load_seconds: float
    analyze_seconds: float
    size: str
    notes: list[str] = field(default_factory=list)


def load_postgres(database: Database, rows: int, seed: int, chunk: int) -> Loaded:
    """COPY ... FREEZE into the migrated table (truncated in the same transaction), ANALYZE."""
    engine = create_sync_engine(database.urls.sync_url)  # postgresql+psycopg
    raw = engine.raw_connection()
    try:
        connection: Any = raw.driver_connection  # psycopg.Connection
        with stopwatch() as load, connection.cursor() as cursor:
            cursor.execute("TRUNCATE crypto.price_tickers")
            copy_sql = (
                'COPY crypto.price_tickers (ticker, "timestamp", price, received_at) '
                "FROM STDIN WITH (FREEZE)"
            )
            with cursor.copy(copy_sql) as copy:
                for part in chunks(rows, seed, chunk):
                    copy.write("".join(f"{t}\t{ts}\t{p!r}\t{r}+00\n" for t, ts, p, r in part))
            connection.commit()
        connection.autocommit = True
        with stopwatch() as analyze, connection.cursor() as cursor:
            cursor.execute("ANALYZE crypto.price_tickers")
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*), pg_size_pretty(pg_table_size('crypto.price_tickers')), "
                "pg_size_pretty(pg_indexes_size('crypto.price_tickers')), "
                "(SELECT relallvisible::float / greatest(relpages, 1) FROM pg_class "
                " WHERE oid = 'crypto.price_tickers'::regclass) "
                "FROM crypto.price_tickers"
            )
            count, heap, index, visible = cursor.fetchone()
    finally:
        raw.close()
        engine.dispose()
    return Loaded(
        count,
        load[0],
        analyze[0],
        f"heap {heap} + primary key index {index}",
        [f"{visible:.0%} of the heap pages all-visible after COPY FREEZE"],
    )


def load_sqlite(path: Path, rows: int, seed: int, chunk: int) -> Loaded:
    """executemany of plain tuples in one transaction, straight through the sqlite3 module."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        # The file is in WAL mode already (the product's pragma, persistent); for the load only:
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-1000000")  # 1 GB of page cache for the load
        insert = (
            "INSERT INTO crypto_price_tickers (ticker, timestamp, price, received_at) "
            "VALUES (?, ?, ?, ?)"
        )
        with stopwatch() as load:
            connection.execute("BEGIN")
            for part in chunks(rows, seed, chunk):
                connection.executemany(insert, part)
            connection.execute("COMMIT")
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        count = connection.execute("SELECT count(*) FROM crypto_price_tickers").fetchone()[0]
    finally:
        connection.close()
    size = path.stat().st_size / 2**20
    return Loaded(
        count,
        load[0],
        0.0,
        f"{size:,.0f} MiB file",
        ["no ANALYZE (the product never runs it on SQLite; the plan uses the primary key anyway)"],
    )


# Measuring.


@dataclass
class Series:
    query: str
    path: str
    seconds: list[float]
    other_cores: float
    gc: str

    @property
    def summary(self) -> dict[str, float]:
        return latency_summary(self.seconds)


async def timed(
    call: Callable[[int], Awaitable[Any]], warmup: int, calls: int, watch: LoadWatch, gcw: GcWatch
) -> tuple[list[float], float, str]:
    for i in range(warmup):
        await call(-1 - i)
    samples = []
    first = watch.mark()
    gcw.reset()
    gcw.active = True
    try:
        for i in range(calls):
            start = time.perf_counter()
            await call(i)
            samples.append(time.perf_counter() - start)
    finally:
        gcw.active = False
    return samples, watch.other_cores(first, watch.mark()), gcw.summary()


def iso(ms: int) -> str:
    return from_ms(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


class Inputs:
    """Random (ticker, window start) pairs, a fresh stream per series so none warms another."""

    def __init__(self, rows: int, seed: int) -> None:
        self.span = seconds_for(rows)
        self.rng = random.Random(seed)

    def window(self) -> tuple[str, int, int]:
        last_start = max(self.span - DAY, 1)
        start = (T0 + self.rng.randrange(last_start)) * 1000
        return self.rng.choice(TICKERS), start, start + DAY * 1000

    def ticker(self) -> str:
        return self.rng.choice(TICKERS)


class Captured:
    """The SQL the product sends, caught on the engine, to EXPLAIN and to replay on the driver."""

    def __init__(self, database: Database) -> None:
        self.statements: list[tuple[str, Any]] = []
        self.engine = database.engine.sync_engine
        event.listen(self.engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self.statements.append((statement, parameters))

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)


def rebind(parameters: Any, mapping: dict[Any, Any]) -> tuple[Any, ...]:
    """The captured positional parameters with the ticker / bounds of another call."""
    return tuple(mapping.get(value, value) for value in parameters)


async def measure(
    database: Database,
    *,
    rows: int,
    seed: int,
    warmup: int,
    calls: int,
    watch: LoadWatch,
    sqlite_path: Path | None,
) -> tuple[list[Series], list[tuple[str, str]], dict[str, int]]:
    gcw = GcWatch()
    try:
        return await _measure_all(database, rows, seed, warmup, calls, watch, gcw, sqlite_path)
    finally:
        gcw.close()


async def _measure_all(
    database: Database,
    rows: int,
    seed: int,
    warmup: int,
    calls: int,
    watch: LoadWatch,
    gcw: GcWatch,
    sqlite_path: Path | None,
) -> tuple[list[Series], list[tuple[str, str]], dict[str, int]]:
    service = PriceService(database, KnownTickers(), always_known=TICKERS)  # type: ignore[arg-type]
    tables = database.tables
    dialect = database.dialect
    checks = {"short_pages": 0}
    gc.collect()
    started = time.perf_counter()
    gc.collect()
    checks["gc_full_ms"] = round((time.perf_counter() - started) * 1000, 1)  # type: ignore[assignment]
    checks["gc_objects"] = len(gc.get_objects())

    # Capture the product's SQL for one call of each read (and check the page is full).
    capture = Captured(database)
    try:
        ticker0, start0, end0 = Inputs(rows, seed).window()
        page = await service.between(
            ticker0, start_date=iso(start0), end_date=iso(end0), limit=PAGE, cursor=None
        )
        between_sql = capture.statements[-1]
        assert len(page.items) == PAGE, f"a 1-day page has {len(page.items)} rows, not {PAGE}"
        assert page.items[0]["timestamp"] == start0 and page.next_cursor is not None
        newest = await service.latest(ticker0)
        latest_sql = capture.statements[-1]
        assert newest.timestamp >= (T0 + seconds_for(rows) - 1) * 1000 - 1000
    finally:
        capture.close()

    series: list[Series] = []
    plans: list[tuple[str, str]] = []

    async def run(query: str, path: str, call: Callable[[int], Awaitable[Any]]) -> None:
        samples, other, collections = await timed(call, warmup, calls, watch, gcw)
        series.append(Series(query, path, samples, other, collections))
        s = series[-1].summary
        print(
            f"  {dialect:10} {query:8} {path:28} p50 {s['p50']:7.2f}  p99 {s['p99']:7.2f}  "
            f"max {s['max']:7.2f} ms  (other load {other:.2f} cores; GC {collections})",
            flush=True,
        )

    # 1. The product's read path, as the routes call it, after the server's start-up step that
    # moves the start-up heap out of the cyclic GC's reach (cryptomarket/app.py: gc.freeze()).
    inputs = Inputs(rows, seed + 1)
    gc.collect()
    gc.freeze()

    async def service_between(_i: int) -> None:
        ticker, start, end = inputs.window()
        page = await service.between(
            ticker, start_date=iso(start), end_date=iso(end), limit=PAGE, cursor=None
        )
        if len(page.items) != PAGE:
            checks["short_pages"] += 1

    await run("between", "PriceService (product path)", service_between)
    latest_inputs = Inputs(rows, seed + 2)

    async def service_latest(_i: int) -> None:
        await service.latest(latest_inputs.ticker())

    await run("latest", "PriceService (product path)", service_latest)

    # Comparison: the same calls without that step, as before it existed: the difference is
    # full (gen-2) collections walking the start-up heap.
    gc.unfreeze()
    inputs = Inputs(rows, seed + 7)
    await run("between", "PriceService, no gc.freeze()", service_between)

    # 2. The repository alone: pool checkout + SQLAlchemy + rows, no response models.
    inputs = Inputs(rows, seed + 3)

    async def repository_between(_i: int) -> None:
        ticker, start, end = inputs.window()
        async with database.reading() as connection:
            await PriceRepository(connection, tables).between(
                ticker, start, end, after=None, limit=PAGE
            )

    await run("between", "PriceRepository", repository_between)
    latest_inputs = Inputs(rows, seed + 4)

    async def repository_latest(_i: int) -> None:
        async with database.reading() as connection:
            await PriceRepository(connection, tables).latest(latest_inputs.ticker())

    await run("latest", "PriceRepository", repository_latest)

    # 3. The baseline: the same SQL on the bare driver, one connection held throughout.
    def between_params(sql: tuple[str, Any]) -> Callable[[], tuple[Any, ...]]:
        inputs = Inputs(rows, seed + 5)

        def make() -> tuple[Any, ...]:
            ticker, start, end = inputs.window()
            return rebind(sql[1], {ticker0: ticker, start0: start, end0: end})

        return make

    def latest_params(sql: tuple[str, Any]) -> Callable[[], tuple[Any, ...]]:
        inputs = Inputs(rows, seed + 6)
        return lambda: rebind(sql[1], {ticker0: inputs.ticker()})

    if dialect == "postgresql":
        async with database.reading() as connection:
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection  # asyncpg.Connection
            make = between_params(between_sql)

            async def driver_between(_i: int) -> None:
                await driver.fetch(between_sql[0], *make())

            await run("between", "asyncpg, same SQL (baseline)", driver_between)
            make_latest = latest_params(latest_sql)

            async def driver_latest(_i: int) -> None:
                await driver.fetch(latest_sql[0], *make_latest())

            await run("latest", "asyncpg, same SQL (baseline)", driver_latest)
            for name, (sql, params) in (("between", between_sql), ("latest", latest_sql)):
                explained = await driver.fetch(
                    "EXPLAIN (ANALYZE, BUFFERS, VERBOSE) " + sql, *params
                )
                plans.append(
                    (f"{name}: {sql}  -- {list(params)}", "\n".join(r[0] for r in explained))
                )
    else:
        assert sqlite_path is not None
        lite = sqlite3.connect(sqlite_path)
        try:
            make = between_params(between_sql)

            async def driver_between(_i: int) -> None:
                lite.execute(between_sql[0], make()).fetchall()

            await run("between", "sqlite3, same SQL (baseline)", driver_between)
            make_latest = latest_params(latest_sql)

            async def driver_latest(_i: int) -> None:
                lite.execute(latest_sql[0], make_latest()).fetchall()

            await run("latest", "sqlite3, same SQL (baseline)", driver_latest)
            for name, (sql, params) in (("between", between_sql), ("latest", latest_sql)):
                plan = lite.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
                plans.append(
                    (f"{name}: {sql}  -- {list(params)}", "\n".join(str(r[-1]) for r in plan))
                )
        finally:
            lite.close()
    return series, plans, checks


# The report.


def report_database(
    report: Report,
    dialect: str,
    loaded: Loaded,
    series: list[Series],
    plans: list[tuple[str, str]],
    checks: dict[str, int],
    extra: str | None,
) -> list[list[str]]:
    name = "PostgreSQL" if dialect == "postgresql" else "SQLite"
    report.heading(f"{name}")
    rate = loaded.rows / loaded.load_seconds if loaded.load_seconds else math.nan
    lines = [
        f"- rows loaded: {loaded.rows:,} ({len(TICKERS)} tickers, 1 tick per second each, "
        f"{seconds_for(loaded.rows) / DAY:.1f} days); size: {loaded.size}",
        f"- bulk load: {loaded.load_seconds:.1f} s ({rate:,.0f} rows/s)"
        + (f", ANALYZE {loaded.analyze_seconds:.1f} s" if dialect == "postgresql" else ""),
        *(f"- {note}" for note in loaded.notes),
        f"- short pages (fewer than {PAGE} rows) among the timed `between` calls: "
        f"{checks['short_pages']}",
        f"- this process's heap before the series: {checks['gc_objects']:,} objects tracked by "
        f"the cyclic GC; one full collection (`gc.collect()`) took {checks['gc_full_ms']} ms",
    ]
    if extra:
        lines.append(f"- server settings: {extra}")
    report.text("\n".join(lines))

    baseline = {s.query: s.summary for s in series if "baseline" in s.path}
    rows = []
    for s in series:
        summary = s.summary
        base = baseline.get(s.query)
        rows.append(
            [
                s.query,
                s.path,
                summary["n"],
                fmt(summary["p50"]),
                fmt(summary["p95"]),
                fmt(summary["p99"]),
                fmt(summary["max"]),
                fmt(summary["p50"] / base["p50"]) + "x" if base else "-",
                fmt(summary["p99"] / base["p99"]) + "x" if base else "-",
                fmt(s.other_cores),
                s.gc,
            ]
        )
    report.table(
        (
            "query",
            "path",
            "calls",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "p50 / baseline",
            "p99 / baseline",
            "other load (cores)",
            "GC pauses in the series",
        ),
        rows,
    )
    for title, plan in plans:
        report.text(f"Plan of {title}")
        report.code(plan)

    verdicts = []
    for s in series:
        if "product" in s.path:
            p99 = s.summary["p99"]
            target = TARGET_P99_MS[dialect]
            verdicts.append(
                [
                    name,
                    s.query,
                    fmt(s.summary["p50"]),
                    fmt(p99),
                    f"<= {target:.0f}",
                    "met" if p99 <= target else "MISSED",
                ]
            )
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="ticks in the table")
    parser.add_argument("--calls", type=int, default=500, help="timed calls per query and path")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls before each series")
    parser.add_argument(
        "--databases", default="postgresql,sqlite", help="comma-separated: postgresql,sqlite"
    )
    parser.add_argument(
        "--chunk", type=int, default=100_000, help="rows per COPY write/executemany"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--output", type=Path, default=None, help="default bench/results/history.md"
    )
    args = parser.parse_args()
    exit_on_sigterm()
    if args.rows < len(TICKERS) * (DAY + PAGE):
        parser.error(f"--rows must be at least {len(TICKERS) * (DAY + PAGE):,} (a full day)")
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]

    report = Report("history", "History reads: a 1-day page of 1,000 rows, and latest")
    watch = LoadWatch()
    busy = LoadWatch.busy_processes()
    report.text(
        f"{args.rows:,} ticks, {args.calls} timed calls per series after {args.warmup} warm-up "
        "calls, at random window starts and tickers. Latencies are per call, measured around the "
        'awaited call in the benchmark\'s event loop. "other load" is the CPU other processes '
        "on this shared 2-core machine used meanwhile.\n\n"
        "Other busy processes at the start: " + ("; ".join(busy) if busy else "none")
    )
    verdicts: list[list[str]] = []
    phases: list[tuple[str, float]] = []
    with temporary_dir("bench-history-") as tmp:
        if "postgresql" in databases:
            started = time.monotonic()
            with postgres_server(tmp / "pg") as server:
                server.create_database("history")
                report.postgres_version = server.psql("SHOW server_version")
                database = Database(server.url("postgresql+psycopg", "history"))
                try:
                    upgrade(database.urls.sync_url)
                    print("loading PostgreSQL...", flush=True)
                    loaded = load_postgres(database, args.rows, args.seed, args.chunk)
                    print(f"  loaded {loaded.rows:,} rows in {loaded.load_seconds:.1f} s")
                    series, plans, checks = asyncio.run(_measure(database, args, watch, None))
                finally:
                    asyncio.run(database.dispose())
                settings = postgres_settings(server, "history")
            verdicts += report_database(
                report, "postgresql", loaded, series, plans, checks, settings
            )
            phases.append(
                ("PostgreSQL (server start, load, queries, stop)", time.monotonic() - started)
            )
        if "sqlite" in databases:
            started = time.monotonic()
            path = tmp / "history.sqlite3"
            database = Database(f"sqlite:///{path}")
            try:
                upgrade(database.urls.sync_url)
                print("loading SQLite...", flush=True)
                loaded = load_sqlite(path, args.rows, args.seed, args.chunk)
                print(f"  loaded {loaded.rows:,} rows in {loaded.load_seconds:.1f} s")
                series, plans, checks = asyncio.run(_measure(database, args, watch, path))
            finally:
                asyncio.run(database.dispose())
            verdicts += report_database(report, "sqlite", loaded, series, plans, checks, None)
            phases.append(("SQLite (load, queries)", time.monotonic() - started))
    busy = LoadWatch.busy_processes()
    report.text("Other busy processes at the end: " + ("; ".join(busy) if busy else "none"))

    report.heading("Targets (p99 of the product path)")
    report.table(("database", "query", "p50 ms", "p99 ms", "target ms", "verdict"), verdicts)
    report.text("Phase times: " + "; ".join(f"{name} {sec:.0f} s" for name, sec in phases))
    report.write(args.output)


async def _measure(
    database: Database, args: argparse.Namespace, watch: LoadWatch, sqlite_path: Path | None
) -> tuple[list[Series], list[tuple[str, str]], dict[str, int]]:
    try:
        return await measure(
            database,
            rows=args.rows,
            seed=args.seed,
            warmup=args.warmup,
            calls=args.calls,
            watch=watch,
            sqlite_path=sqlite_path,
        )
    finally:
        await database.dispose()  # the pool belongs to this event loop


if __name__ == "__main__":
    main()
