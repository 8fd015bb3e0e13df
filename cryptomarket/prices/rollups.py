"""Candles kept beside the ticks: one per ticker per minute and per hour (`price_candles`).

Every write of ticks learns which ticks it really stored (one already stored is skipped), folds
them into partial candles and merges those into the stored ones: the open is the earlier of the
two opens by timestamp, the close the later close, high and low the extremes, counts add up. The
merge does not depend on order, so two writers storing ticks of one minute at once both count,
and a backfill that fills a window updates its candles without a rebuild.

Coarser candles (prices/candles.py) are read from these: minutes up to 30-minute candles, hours
from 60 minutes to a day.
"""

from collections.abc import Iterable
from functools import cache
from typing import Any

from sqlalchemy import Executable, and_, case, func, literal, select, true
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from cryptomarket.core.tables import Tables

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
WIDTHS = (MINUTE_MS, HOUR_MS)
MERGED = ("open_ts", "open", "high", "low", "close_ts", "close", "count")


def candle_rows(stored: Iterable[Any]) -> list[dict[str, Any]]:
    """Partial candles (minute and hour) of stored ticks, given as (ticker, timestamp, price)
    rows; sorted by key, so concurrent writers lock candle rows in one order (no deadlock)."""
    buckets: dict[tuple[str, int, int], list[Any]] = {}
    for ticker, timestamp, price in stored:
        for width in WIDTHS:
            key = (ticker, width, timestamp - timestamp % width)
            candle = buckets.get(key)
            if candle is None:
                buckets[key] = [timestamp, price, price, price, timestamp, price, 1]
                continue
            if timestamp < candle[0]:
                candle[0], candle[1] = timestamp, price
            candle[2] = max(candle[2], price)
            candle[3] = min(candle[3], price)
            if timestamp > candle[4]:
                candle[4], candle[5] = timestamp, price
            candle[6] += 1
    return [
        {
            "ticker": key[0],
            "width": key[1],
            "start": key[2],
            **dict(zip(MERGED, values, strict=True)),
        }
        for key, values in sorted(buckets.items())
    ]


@cache  # a statement is immutable: built once, not on every write
def merge_candles(tables: Tables, dialect: str) -> Executable:
    """Merge partial candles (executed with `candle_rows`) into the stored ones."""
    candles = tables.price_candles
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(candles)
    new = statement.excluded
    least, greatest = _extremes(dialect)
    return statement.on_conflict_do_update(
        index_elements=["ticker", "width", "start"],
        set_={
            "open_ts": least(candles.c.open_ts, new.open_ts),
            "open": case((new.open_ts < candles.c.open_ts, new.open), else_=candles.c.open),
            "high": greatest(candles.c.high, new.high),
            "low": least(candles.c.low, new.low),
            "close_ts": greatest(candles.c.close_ts, new.close_ts),
            "close": case((new.close_ts > candles.c.close_ts, new.close), else_=candles.c.close),
            "count": candles.c.count + new.count,
        },
    )


def rebuild_candles(tables: Tables, dialect: str, width: int) -> Executable:
    """Recompute every stored candle of one width from what it is built of (the ticks for
    minutes, the minutes for hours): filling the table the first time."""
    candles, ticks = tables.price_candles, tables.price_tickers
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    if width == MINUTE_MS:
        source = select(
            ticks.c.ticker,
            (ticks.c.timestamp // width).label("bucket"),
            func.min(ticks.c.timestamp).label("first"),
            func.max(ticks.c.timestamp).label("last"),
            func.max(ticks.c.price).label("high"),
            func.min(ticks.c.price).label("low"),
            func.count().label("n"),
        ).group_by(ticks.c.ticker, "bucket")
        first_row, last_row = ticks.alias("first_tick"), ticks.alias("last_tick")
        first_key, last_key = first_row.c.timestamp, last_row.c.timestamp
        opened, closed = first_row.c.price, last_row.c.price
        first_on: list[ColumnElement[bool]] = []
        last_on: list[ColumnElement[bool]] = []
    else:
        minutes = candles.alias("minutes")
        source = (
            select(
                minutes.c.ticker,
                (minutes.c.start // width).label("bucket"),
                func.min(minutes.c.start).label("first"),
                func.max(minutes.c.start).label("last"),
                func.max(minutes.c.high).label("high"),
                func.min(minutes.c.low).label("low"),
                func.sum(minutes.c.count).label("n"),
            )
            .where(minutes.c.width == MINUTE_MS)
            .group_by(minutes.c.ticker, "bucket")
        )
        first_row, last_row = candles.alias("first_minute"), candles.alias("last_minute")
        first_key, last_key = first_row.c.start, last_row.c.start
        opened, closed = first_row.c.open, last_row.c.close
        first_on = [first_row.c.width == MINUTE_MS]
        last_on = [last_row.c.width == MINUTE_MS]
    grouped = source.subquery("grouped")
    open_ts = first_row.c.timestamp if width == MINUTE_MS else first_row.c.open_ts
    close_ts = last_row.c.timestamp if width == MINUTE_MS else last_row.c.close_ts
    rows = (
        select(
            grouped.c.ticker,
            literal(width),
            grouped.c.bucket * width,
            open_ts,
            opened,
            grouped.c.high,
            grouped.c.low,
            close_ts,
            closed,
            grouped.c.n,
        )
        .select_from(
            grouped.join(
                first_row,
                and_(
                    first_row.c.ticker == grouped.c.ticker, first_key == grouped.c.first, *first_on
                ),
            ).join(
                last_row,
                and_(last_row.c.ticker == grouped.c.ticker, last_key == grouped.c.last, *last_on),
            )
        )
        .where(true())  # SQLite reads an INSERT ... SELECT ... ON CONFLICT only with a WHERE
    )
    statement = insert(candles).from_select(["ticker", "width", "start", *MERGED], rows)
    return statement.on_conflict_do_update(
        index_elements=["ticker", "width", "start"],
        set_={name: getattr(statement.excluded, name) for name in MERGED},
    )


def _extremes(dialect: str) -> tuple[Any, Any]:
    """(least, greatest) of two values: SQLite's scalar min/max, PostgreSQL's LEAST/GREATEST."""
    if dialect == "sqlite":
        return func.min, func.max
    return func.least, func.greatest
