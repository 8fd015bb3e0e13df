"""The price history as CSV (kit/csv.py streams it): every tick of a range, or every candle of
a range page after page, whatever its length.

Ticks on PostgreSQL are written by the server itself (COPY ... TO STDOUT, read as it comes with
at most QUEUED chunks waiting); on SQLite they are read and formatted in a worker thread.
Both write the same text as the JSON answers: ISO dates in UTC with Z.
"""

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread

from cryptomarket.core.db import Database
from cryptomarket.core.tables import build_tables
from cryptomarket.core.tasks import cancel_and_wait
from cryptomarket.instruments.frames import GROUPS, NUMBER_OR_TEXT, NUMBERS, TEXTS
from cryptomarket.instruments.names import is_instrument
from cryptomarket.prices.dates import from_ms
from cryptomarket.prices.kinds import kind_of
from cryptomarket.prices.schemas import CandleRange

TICK_HEADER = ("ticker", "timestamp", "datetime", "price")
# An instrument's rows add the fields of its ticker, nested ones flattened (stats_volume).
INSTRUMENT_PATHS: tuple[tuple[str, tuple[str, ...]], ...] = (
    *((name, (name,)) for name in (*NUMBERS, *TEXTS, *NUMBER_OR_TEXT)),
    *((f"{group}_{key}", (group, key)) for group, keys in GROUPS.items() for key in keys),
)
INSTRUMENT_HEADER = (*TICK_HEADER, *(column for column, _ in INSTRUMENT_PATHS))
CANDLE_HEADER = ("start", "datetime", "open", "high", "low", "close", "count", "gap")
CURSOR_ROWS = 10_000
QUEUED = 8  # COPY chunks (about 64 KiB each) read ahead of a slow client
DAY_MS = 86_400_000

Rows = list[tuple[Any, ...]]


def iso(timestamp: int) -> str:
    """The moment as the JSON answers write it (ISO 8601, UTC as Z)."""
    return from_ms(timestamp).isoformat().replace("+00:00", "Z")


# The text of every second of a day and of every millisecond: an export's hot loop looks them up.
_CLOCK = [f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)]
_FRACTION = ["Z", *(f".{ms:03d}000Z" for ms in range(1, 1000))]


class IsoDates:
    """`iso` for many timestamps, formatting each day's date once and looking up the rest."""

    def __init__(self) -> None:
        self._days: dict[int, str] = {}

    def __call__(self, timestamp: int) -> str:
        day, rest = divmod(timestamp, DAY_MS)
        prefix = self._days.get(day)
        if prefix is None:
            if len(self._days) > 1_000:  # a long range: keep the cache small
                self._days.clear()
            prefix = self._days[day] = from_ms(day * DAY_MS).strftime("%Y-%m-%dT")
        second, ms = divmod(rest, 1000)
        return prefix + _CLOCK[second] + _FRACTION[ms]


def tick_csv(database: Database, ticker: str, start: int, end: int) -> AsyncIterator[bytes]:
    """Every tick of [start, end] as CSV text, header first."""
    if database.dialect == "postgresql":
        return _copied(database, ticker, start, end)
    return _formatted(database, ticker, start, end)


async def _formatted(database: Database, ticker: str, start: int, end: int) -> AsyncIterator[bytes]:
    """SQLite: read and format in a worker thread, on a connection of its own (rows through
    SQLAlchemy and aiosqlite cost three quarters of an export's time), a chunk per hop, so the
    event loop only hands the chunks on."""
    header = INSTRUMENT_HEADER if is_instrument(ticker) else TICK_HEADER
    yield (",".join(header) + "\n").encode()
    path = database.urls.sync_url.database or ""
    reader = await anyio.to_thread.run_sync(_SqliteTicks, path, ticker, start, end)
    try:
        while chunk := await anyio.to_thread.run_sync(reader.next_chunk):
            yield chunk
    finally:
        # Here too when the client left (the task is cancelled, so no await would run): no
        # thread uses the connection any more (run_sync waits for its thread), and closing
        # it takes microseconds.
        reader.close()


class _SqliteTicks:
    """A range's ticks as CSV text, CURSOR_ROWS lines at a time. No field of a tick needs CSV
    quoting (a ticker is [a-z0-9_-]), so plain joins do what the csv module would, faster."""

    def __init__(self, path: str, ticker: str, start: int, end: int) -> None:
        # Used from whichever worker thread anyio picks, one call at a time.
        self.connection = sqlite3.connect(path, check_same_thread=False)
        self.connection.execute("PRAGMA busy_timeout=5000")
        self.instrument = is_instrument(ticker)
        extra = "".join(
            f", json_extract(fields, '$.{'.'.join(path)}')" for _, path in INSTRUMENT_PATHS
        )
        query = SQLITE_TICKS.format(
            table=sqlite_table(ticker), fields=extra if self.instrument else ""
        )
        self.cursor = self.connection.execute(query, (ticker, start, end))
        self.ticker = ticker
        self.dates = IsoDates()

    def next_chunk(self) -> bytes:
        rows = self.cursor.fetchmany(CURSOR_ROWS)
        ticker, dates = self.ticker, self.dates
        if self.instrument:
            return "".join(
                f"{ticker},{row[0]},{dates(row[0])},{row[1]!r},{_cells(row[2:])}\n" for row in rows
            ).encode()
        return "".join([f"{ticker},{ts},{dates(ts)},{price!r}\n" for ts, price in rows]).encode()

    def close(self) -> None:
        self.cursor.close()  # first: an unfinished statement keeps a closed connection open
        self.connection.close()


def _cells(values: tuple[Any, ...]) -> str:
    """An instrument's field values as CSV cells: empty for null, text quoted when it must be."""
    cells = []
    for value in values:
        if value is None:
            cells.append("")
        elif isinstance(value, str):
            needs = any(c in value for c in ',"\r\n')
            cells.append('"' + value.replace('"', '""') + '"' if needs else value)
        else:
            cells.append(repr(value))
    return ",".join(cells)


SQLITE_TICKS = (
    "SELECT timestamp, price{fields} FROM {table} "
    "WHERE ticker = ? AND timestamp >= ? AND timestamp <= ? ORDER BY timestamp"
)


def sqlite_table(ticker: str) -> str:
    """The table of the ticker's kind, by its name on SQLite (an instrument's price: its mark)."""
    return kind_of(ticker).table(build_tables("sqlite")).name


def postgres_table(ticker: str) -> str:
    table = kind_of(ticker).table(build_tables("postgresql"))
    return f"{table.schema}.{table.name}"


# The moment of a tick, and its text as the JSON answers write it (no fraction on a whole second).
_MOMENT = "(to_timestamp(timestamp / 1000) + (timestamp % 1000) * interval '1 millisecond')"
_UTC = _MOMENT + " AT TIME ZONE 'UTC'"
COPY_TICKS = (
    "SELECT ticker, timestamp, CASE WHEN timestamp % 1000 = 0 "  # noqa: S608  # our own names; values bound
    "THEN to_char(" + _UTC + """, 'YYYY-MM-DD"T"HH24:MI:SS"Z"') """
    "ELSE to_char(" + _UTC + """, 'YYYY-MM-DD"T"HH24:MI:SS.MS"000Z"') END AS datetime, price"""
    "{fields} FROM {table} "
    "WHERE ticker = $1 AND timestamp >= $2 AND timestamp <= $3 ORDER BY timestamp"
)


def _postgres_fields(ticker: str) -> str:
    if not is_instrument(ticker):
        return ""
    columns = []
    for column, path in INSTRUMENT_PATHS:
        *groups, last = path
        reach = "".join(f"->'{group}'" for group in groups)
        columns.append(f", fields{reach}->>'{last}' AS {column}")
    return "".join(columns)


async def _copied(database: Database, ticker: str, start: int, end: int) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=QUEUED)

    async def put(data: bytes | bytearray) -> None:  # asyncpg hands out bytearrays
        await queue.put(bytes(data))

    async with database.reading() as connection:
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection  # asyncpg.Connection
        copy = asyncio.create_task(
            driver.copy_from_query(
                COPY_TICKS.format(table=postgres_table(ticker), fields=_postgres_fields(ticker)),
                ticker,
                start,
                end,
                output=put,
                format="csv",
                header=True,
            )
        )
        try:
            while True:
                taken = asyncio.ensure_future(queue.get())
                await asyncio.wait({taken, copy}, return_when=asyncio.FIRST_COMPLETED)
                if taken.done():
                    yield taken.result()
                    continue
                taken.cancel()
                while not queue.empty():
                    yield queue.get_nowait()
                copy.result()  # raises what ended the COPY, if it failed
                return
        finally:
            if not copy.done():  # the client left: the COPY is cancelled on the server too
                await cancel_and_wait(copy)


async def candle_rows(first: CandleRange, more: Any) -> AsyncIterator[Rows]:
    """The candles of `first` and of every page after it (`more(cursor)` reads the next)."""
    page = first
    while True:
        yield [
            (c.start, iso(c.start), c.open, c.high, c.low, c.close, c.count, str(c.gap).lower())
            for c in page.items
        ]
        if page.next_cursor is None:
            return
        page = await more(page.next_cursor)
