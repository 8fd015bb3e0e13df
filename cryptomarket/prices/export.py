"""The price history as CSV rows (kit/csv.py streams them): every tick of a range from a
server-side cursor, or every candle of a range page after page, whatever its length."""

from collections.abc import AsyncIterator
from typing import Any

from cryptomarket.core.db import Database
from cryptomarket.prices.dates import from_ms
from cryptomarket.prices.repository import PriceRepository
from cryptomarket.prices.schemas import CandleRange

TICK_HEADER = ("ticker", "timestamp", "datetime", "price")
CANDLE_HEADER = ("start", "datetime", "open", "high", "low", "close", "count", "gap")
CURSOR_ROWS = 10_000
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


async def tick_rows(database: Database, ticker: str, start: int, end: int) -> AsyncIterator[Rows]:
    dates = IsoDates()
    async with database.reading() as connection:
        repository = PriceRepository(connection, database.tables)
        async for rows in repository.stream_between(ticker, start, end, chunk=CURSOR_ROWS):
            yield [(ticker, timestamp, dates(timestamp), price) for timestamp, price in rows]


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
