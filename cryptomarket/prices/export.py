"""The price history as CSV (kit/csv.py streams it): every tick of a range, or every candle of
a range page after page, whatever its length.

Ticks on PostgreSQL are written by the server itself (COPY ... TO STDOUT, read as it comes with
at most QUEUED chunks waiting); on SQLite they are formatted here from a server-side cursor.
Both write the same text as the JSON answers: ISO dates in UTC with Z.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from cryptomarket.core.db import Database
from cryptomarket.core.tasks import cancel_and_wait
from cryptomarket.prices.dates import from_ms
from cryptomarket.prices.repository import PriceRepository
from cryptomarket.prices.schemas import CandleRange

TICK_HEADER = ("ticker", "timestamp", "datetime", "price")
CANDLE_HEADER = ("start", "datetime", "open", "high", "low", "close", "count", "gap")
CURSOR_ROWS = 10_000
QUEUED = 8  # COPY chunks (about 64 KiB each) read ahead of a slow client
DAY_MS = 86_400_000

Rows = list[tuple[Any, ...]]


def iso(timestamp: int) -> str:
    """The moment as the JSON answers write it (ISO 8601, UTC as Z)."""
    return from_ms(timestamp).isoformat().replace("+00:00", "Z")


class IsoDates:
    """`iso` for many timestamps, formatting each day's date once (an export's hot loop)."""

    def __init__(self) -> None:
        self._day = -1
        self._prefix = ""

    def __call__(self, timestamp: int) -> str:
        day, rest = divmod(timestamp, DAY_MS)
        if day != self._day:
            self._day = day
            self._prefix = from_ms(day * DAY_MS).strftime("%Y-%m-%dT")
        hours, rest = divmod(rest, 3_600_000)
        minutes, rest = divmod(rest, 60_000)
        seconds, ms = divmod(rest, 1000)
        clock = f"{self._prefix}{hours:02d}:{minutes:02d}:{seconds:02d}"
        return f"{clock}.{ms:03d}000Z" if ms else clock + "Z"


def tick_csv(database: Database, ticker: str, start: int, end: int) -> AsyncIterator[bytes]:
    """Every tick of [start, end] as CSV text, header first."""
    if database.dialect == "postgresql":
        return _copied(database, ticker, start, end)
    return _formatted(database, ticker, start, end)


async def _formatted(database: Database, ticker: str, start: int, end: int) -> AsyncIterator[bytes]:
    """The rows written here: no field of a tick needs CSV quoting (a ticker is [a-z0-9_-]),
    so plain joins do what the csv module would, several times faster."""
    yield (",".join(TICK_HEADER) + "\n").encode()
    dates = IsoDates()
    async with database.reading() as connection:
        repository = PriceRepository(connection, database.tables)
        async for rows in repository.stream_between(ticker, start, end, chunk=CURSOR_ROWS):
            text = [f"{ticker},{ts},{dates(ts)},{price!r}\n" for ts, price in rows]
            yield "".join(text).encode()


# The moment of a tick, and its text as the JSON answers write it (no fraction on a whole second).
_MOMENT = "(to_timestamp(timestamp / 1000) + (timestamp % 1000) * interval '1 millisecond')"
_UTC = _MOMENT + " AT TIME ZONE 'UTC'"
COPY_TICKS = (
    "SELECT ticker, timestamp, CASE WHEN timestamp % 1000 = 0 "
    "THEN to_char(" + _UTC + """, 'YYYY-MM-DD"T"HH24:MI:SS"Z"') """
    "ELSE to_char(" + _UTC + """, 'YYYY-MM-DD"T"HH24:MI:SS.MS"000Z"') END AS datetime, price """
    "FROM crypto.price_tickers "  # core/tables.py: the schema and name on PostgreSQL
    "WHERE ticker = $1 AND timestamp >= $2 AND timestamp <= $3 ORDER BY timestamp"
)


async def _copied(database: Database, ticker: str, start: int, end: int) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=QUEUED)

    async def put(data: bytes | bytearray) -> None:  # asyncpg hands out bytearrays
        await queue.put(bytes(data))

    async with database.reading() as connection:
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection  # asyncpg.Connection
        copy = asyncio.create_task(
            driver.copy_from_query(
                COPY_TICKS, ticker, start, end, output=put, format="csv", header=True
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
