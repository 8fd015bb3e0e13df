"""The price API's logic: checks its input, reads the store, shapes the answers."""

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import anyio.to_thread
from pydantic import TypeAdapter
from sqlalchemy import Row

from cryptomarket.core.config import TICKER_PATTERN
from cryptomarket.core.db import Database
from cryptomarket.core.errors import InvalidInput, NotFound, Unavailable
from cryptomarket.instruments.catalogue import InstrumentCatalogue
from cryptomarket.instruments.names import INSTRUMENT_PATTERN, INSTRUMENTS_URL, is_instrument
from cryptomarket.kit.json import OFF_LOOP_ITEMS
from cryptomarket.prices.candles import (
    bucket_start,
    parse_resolution,
    rollup_width,
    touched_by_gaps,
)
from cryptomarket.prices.dates import InvalidDate, from_ms, parse_datetime, to_ms
from cryptomarket.prices.repository import PriceRepository, fields_of
from cryptomarket.prices.schemas import (
    Candle,
    CandleRange,
    PriceItem,
    PricePage,
    PricePoint,
    PriceRange,
)
from cryptomarket.prices.tickers import TICKERS_URL, CatalogueUnavailable, TickerCatalogue

DEFAULT_LIMIT = 1000
# Candles are validated in one call of pydantic's core (about 1 µs each), which is far cheaper
# than constructing each model in Python (a day of minutes is 1,440 of them).
CANDLES = TypeAdapter(list[Candle])
MAX_LIMIT = 10_000


def point(row: Row[Any]) -> PricePoint:
    # Rows from our own table are already valid: skip validation.
    return PricePoint.model_construct(
        ticker=row.ticker,
        price=row.price,
        timestamp=row.timestamp,
        datetime=from_ms(row.timestamp),
        **(fields_of(row) or {}),
    )


async def items(rows: Sequence[Row[Any]]) -> list[PriceItem]:
    """A page's points (up to 10,000) as plain dicts: no model, no validation per row. A big
    page is built in a worker thread (10,000 rows take ~50 ms): the loop keeps its live
    streams moving between the thread's slices."""
    if len(rows) > OFF_LOOP_ITEMS:
        return await anyio.to_thread.run_sync(_items, rows)
    return _items(rows)


def _items(rows: Sequence[Row[Any]]) -> list[PriceItem]:
    if rows and "fields" in rows[0]._mapping:  # an instrument's rows
        instrument_rows: list[dict[str, Any]] = [
            {
                "ticker": r.ticker,
                "price": r.price,
                "timestamp": r.timestamp,
                "datetime": from_ms(r.timestamp),
                **(r.fields or {}),  # its kind's fields: PriceItem's optional keys
            }
            for r in rows
        ]
        return cast(list[PriceItem], instrument_rows)
    return [
        {
            "ticker": r.ticker,
            "price": r.price,
            "timestamp": r.timestamp,
            "datetime": from_ms(r.timestamp),
        }
        for r in rows
    ]


def read_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not re.fullmatch(r"[0-9]{1,18}", cursor):
        raise InvalidInput("cursor is not one this API handed out; pass next_cursor as it came")
    return int(cursor)


def next_cursor(rows: Sequence[Row[Any]], limit: int) -> str | None:
    return str(rows[-1].timestamp) if len(rows) == limit else None


class PriceService:
    def __init__(
        self,
        database: Database,
        catalogue: TickerCatalogue,
        always_known: Iterable[str] = (),
        instruments: InstrumentCatalogue | None = None,
    ) -> None:
        self.database = database
        self.catalogue = catalogue
        self.always_known = frozenset(always_known)
        self.instruments = instruments

    async def check_ticker(self, ticker: str, *, stored: bool = False) -> str:
        """The ticker if Deribit knows it: 422 when malformed, 404 when unknown. `stored`: an
        instrument that expired is accepted while its history is stored (the history routes)."""
        check_form(ticker)
        if is_instrument(ticker):
            return await self._check_instrument(ticker, stored=stored)
        if ticker in self.always_known:
            return ticker
        try:
            known = await self.catalogue.contains(ticker)
        except CatalogueUnavailable:
            raise Unavailable(
                f"cannot check ticker {ticker!r} now: Deribit's index list is unreachable"
            ) from None
        if not known:
            raise NotFound(
                f"unknown ticker {ticker!r}; the supported index names are at {TICKERS_URL}",
                code="unknown_ticker",
            )
        return ticker

    async def _check_instrument(self, ticker: str, *, stored: bool) -> str:
        if self.instruments is None:
            raise NotFound(f"instruments are not served here: {ticker!r}", code="unknown_ticker")
        try:
            active = await self.instruments.get(ticker) is not None
        except CatalogueUnavailable:
            raise Unavailable(
                f"cannot check instrument {ticker!r} now: Deribit's instrument list is unreachable"
            ) from None
        if not active and stored:
            async with self.database.reading() as connection:
                repository = PriceRepository(connection, self.database.tables)
                active = await repository.last_timestamp(ticker) is not None
        if not active:
            raise NotFound(
                f"unknown instrument {ticker!r} (or it expired); the active instruments are at "
                f"{INSTRUMENTS_URL}",
                code="unknown_ticker",
            )
        return ticker

    async def latest(self, ticker: str) -> PricePoint:
        await self.check_ticker(ticker, stored=True)
        async with self.database.reading() as connection:
            row = await PriceRepository(connection, self.database.tables).latest(ticker)
        if row is None:
            raise NotFound(f"no price stored for {ticker} yet", code="no_prices")
        return point(row)

    async def newest_first(self, ticker: str, *, limit: int, cursor: str | None) -> PricePage:
        await self.check_ticker(ticker, stored=True)
        before = read_cursor(cursor)
        async with self.database.reading() as connection:
            rows = await PriceRepository(connection, self.database.tables).newest_first(
                ticker, before=before, limit=limit
            )
        return PricePage.model_construct(  # every field ours and valid already
            ticker=ticker,
            items=await items(rows),
            limit=limit,
            next_cursor=next_cursor(rows, limit),
        )

    async def checked_range(
        self, ticker: str, start_date: str, end_date: str | None
    ) -> tuple[int, int]:
        """A range's ends in ms once the dates and the ticker are checked (an export)."""
        start, end = parse_range(start_date, end_date)
        await self.check_ticker(ticker, stored=True)
        return to_ms(start, up=True), to_ms(end)

    async def between(
        self,
        ticker: str,
        *,
        start_date: str,
        end_date: str | None,
        limit: int,
        cursor: str | None,
    ) -> PriceRange:
        start, end = parse_range(start_date, end_date)
        await self.check_ticker(ticker, stored=True)
        after = read_cursor(cursor)
        async with self.database.reading() as connection:
            rows = await PriceRepository(connection, self.database.tables).between(
                ticker, to_ms(start, up=True), to_ms(end), after=after, limit=limit
            )
        return PriceRange.model_construct(  # every field ours and valid already
            ticker=ticker,
            start_date=start,
            end_date=end,
            items=await items(rows),
            limit=limit,
            next_cursor=next_cursor(rows, limit),
        )

    async def candles(
        self,
        ticker: str,
        *,
        resolution: str,
        start_date: str,
        end_date: str | None,
        limit: int,
        cursor: str | None,
    ) -> CandleRange:
        name, width = parse_resolution(resolution)
        start, end = parse_range(start_date, end_date)
        await self.check_ticker(ticker, stored=True)
        after = read_cursor(cursor)
        # Whole buckets: from the one holding start_date to the end of the one holding end_date.
        first = bucket_start(to_ms(start), width)
        last = bucket_start(to_ms(end), width) + width - 1
        if after is not None:
            first = max(first, bucket_start(after, width) + width)
        async with self.database.reading() as connection:
            repository = PriceRepository(connection, self.database.tables)
            rows = await repository.candles(
                ticker, width, rollup_width(width), first, last, limit=limit
            )
            gaps = (
                await repository.gaps_between(ticker, rows[0].start, rows[-1].start + width - 1)
                if rows
                else []
            )
        touched = touched_by_gaps([row.start for row in rows], width, gaps)
        return CandleRange(
            ticker=ticker,
            resolution=name,
            start_date=start,
            end_date=end,
            items=CANDLES.validate_python(
                [
                    {
                        "start": start,
                        "datetime": start,  # ms: pydantic reads large integers as milliseconds
                        "open": opened,
                        "high": high,
                        "low": low,
                        "close": closed,
                        "count": ticks,
                        "gap": gap,
                    }
                    for (start, opened, high, low, closed, ticks), gap in zip(
                        rows, touched, strict=True
                    )
                ]
            ),
            limit=limit,
            next_cursor=str(rows[-1].start) if len(rows) == limit else None,
        )


def parse_range(start_date: str, end_date: str | None) -> tuple[datetime, datetime]:
    """Both ends in UTC; no end means now; a start after the end is refused."""
    try:
        start = parse_datetime(start_date, name="start_date")
        end = parse_datetime(end_date, name="end_date") if end_date else datetime.now(UTC)
    except InvalidDate as error:
        raise InvalidInput(str(error), code="invalid_date") from None
    if start > end:
        raise InvalidInput(
            f"start_date ({start.isoformat()}) is after end_date ({end.isoformat()})",
            code="invalid_date_range",
        )
    return start, end


def check_form(ticker: str) -> None:
    """422 unless `ticker` is shaped like an index name or an instrument name: nothing else can
    be known or stored, and some text (a NUL) is refused by the database itself."""
    if is_instrument(ticker):
        if not INSTRUMENT_PATTERN.fullmatch(ticker):
            raise InvalidInput(
                f"ticker {ticker[:64]!r} is not an instrument name (like BTC-PERPETUAL)"
            )
    elif not TICKER_PATTERN.fullmatch(ticker):
        raise InvalidInput(
            f"ticker {ticker[:64]!r} is neither an index name (lower case, like btc_usd) "
            "nor an instrument name (upper case, like BTC-PERPETUAL)"
        )
