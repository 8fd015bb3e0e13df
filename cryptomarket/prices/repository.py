"""Every query of the price store. Callers own the transaction."""

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection, Executable, Result, Row, Table, and_, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from cryptomarket.core.tables import Tables
from cryptomarket.instruments.names import is_instrument
from cryptomarket.prices.kinds import kind_of
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.prices.rollups import candle_rows, merge_candles

# (start, open, high, low, close, ticks) of a candle read from the store.
CandleRow = Row[int, float, float, float, float, int]


@cache  # a statement is immutable: built once, not on every write
def insert_ticks(table: Table, dialect: str) -> Executable:
    """Store ticks of one kind (executed with `tick_rows`); one already stored is left as it
    is. Returns (ticker, timestamp, price) of the ticks it stored, for their candles."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(table)
        .on_conflict_do_nothing(index_elements=["ticker", "timestamp"])
        .returning(table.c.ticker, table.c.timestamp, table.c.price)
    )


def by_table(tables: Tables, ticks: Sequence[Tick]) -> dict[Table, list[Tick]]:
    """Ticks split by the table of their kind."""
    split: dict[Table, list[Tick]] = {}
    for tick in ticks:
        split.setdefault(kind_of(tick.ticker).table(tables), []).append(tick)
    return split


def store_ticks(connection: Connection, tables: Tables, ticks: Sequence[Tick]) -> int:
    """Store ticks and fold the new ones into their candles (a sync connection, in the
    caller's transaction); returns how many were new."""
    dialect = connection.dialect.name
    new = 0
    for table, own in by_table(tables, ticks).items():
        stored = connection.execute(insert_ticks(table, dialect), tick_rows(own)).all()
        if stored:
            connection.execute(merge_candles(tables, dialect), candle_rows(stored))
        new += len(stored)
    return new


def tick_rows(ticks: Sequence[Tick]) -> list[dict[str, Any]]:
    """Rows of ticks of one kind: an instrument's carry its fields."""
    rows: list[dict[str, Any]] = [
        {
            "ticker": tick.ticker,
            "timestamp": tick.timestamp,
            "price": tick.price,
            "received_at": tick.received_at,
        }
        for tick in ticks
    ]
    if ticks and is_instrument(ticks[0].ticker):
        for row, tick in zip(rows, ticks, strict=True):
            row["fields"] = dict(tick.fields or {})
    return rows


def upsert_gap(tables: Tables, dialect: str, gap: Gap) -> Executable:
    """Record a gap; recording the same start again widens it instead of repeating it."""
    gaps = tables.price_gaps
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(gaps).values(
        ticker=gap.ticker,
        from_ts=gap.from_ts,
        to_ts=gap.to_ts,
        reason=gap.reason[:200],
        recorded_at=datetime.now(UTC),
    )
    widest = func.max if dialect == "sqlite" else func.greatest
    return statement.on_conflict_do_update(
        index_elements=["ticker", "from_ts"],
        set_={"to_ts": widest(gaps.c.to_ts, statement.excluded.to_ts)},
    )


def aware(moment: datetime) -> datetime:
    """SQLite hands stored UTC moments back without their zone."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def fields_of(row: Row[Any]) -> dict[str, Any] | None:
    """An instrument row's ticker fields; None for an index price's row."""
    fields = row._mapping.get("fields")
    return fields if isinstance(fields, dict) else None


def tick_of(row: Row[Any]) -> Tick:
    """A stored tick of either kind, with its publish stamp."""
    return Tick(row.ticker, row.price, row.timestamp, aware(row.received_at), fields_of(row))


class PriceRepository:
    def __init__(self, connection: AsyncConnection, tables: Tables) -> None:
        self.connection = connection
        self.tables = tables
        self.gaps = tables.price_gaps
        self._insert = (
            postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        )

    async def add_ticks(self, ticks: Sequence[Tick]) -> int:
        """Store ticks and fold the new ones into their candles; one already stored (same
        ticker and timestamp) is left as it is. Returns how many were new."""
        dialect = self.connection.dialect.name
        new = 0
        for table, own in by_table(self.tables, ticks).items():
            result = await self.connection.execute(insert_ticks(table, dialect), tick_rows(own))
            stored = result.all()
            if stored:
                await self.connection.execute(
                    merge_candles(self.tables, dialect), candle_rows(stored)
                )
            new += len(stored)
        return new

    def _ticks(self, ticker: str) -> Table:
        return kind_of(ticker).table(self.tables)

    async def add_gap(self, gap: Gap) -> None:
        """Record a gap; recording the same start again widens it instead of repeating it."""
        await self.connection.execute(upsert_gap(self.tables, self.connection.dialect.name, gap))

    async def latest(self, ticker: str) -> Row[Any] | None:
        ticks = self._ticks(ticker)
        result = await self.connection.execute(
            select(ticks)
            .where(ticks.c.ticker == ticker)
            .order_by(ticks.c.timestamp.desc())
            .limit(1)
        )
        return result.first()

    async def newest_first(
        self, ticker: str, *, before: int | None, limit: int
    ) -> Sequence[Row[Any]]:
        """A page of the newest ticks, older than `before` when given."""
        ticks = self._ticks(ticker)
        query = select(ticks).where(ticks.c.ticker == ticker)
        if before is not None:
            query = query.where(ticks.c.timestamp < before)
        result = await self.connection.execute(
            query.order_by(ticks.c.timestamp.desc()).limit(limit)
        )
        return result.all()

    async def between(
        self, ticker: str, start: int, end: int, *, after: int | None, limit: int
    ) -> Sequence[Row[Any]]:
        """A page of ticks in [start, end], oldest first, later than `after` when given."""
        ticks = self._ticks(ticker)
        lower = ticks.c.timestamp > after if after is not None else None
        query = select(ticks).where(
            ticks.c.ticker == ticker,
            ticks.c.timestamp >= start,
            ticks.c.timestamp <= end,
        )
        if lower is not None:
            query = query.where(lower)
        result = await self.connection.execute(query.order_by(ticks.c.timestamp).limit(limit))
        return result.all()

    async def newest_after(self, ticker: str, after: int, *, limit: int) -> list[Row[Any]]:
        """The newest `limit` ticks later than `after`, oldest first (a bounded catch-up)."""
        ticks = self._ticks(ticker)
        result = await self.connection.execute(
            select(ticks)
            .where(ticks.c.ticker == ticker, ticks.c.timestamp > after)
            .order_by(ticks.c.timestamp.desc())
            .limit(limit)
        )
        return list(reversed(result.all()))

    async def received_at_of(self, ticker: str, timestamp: int) -> datetime | None:
        """The publish stamp of one stored tick (a primary-key lookup)."""
        ticks = self._ticks(ticker)
        result = await self.connection.execute(
            select(ticks.c.received_at).where(
                ticks.c.ticker == ticker, ticks.c.timestamp == timestamp
            )
        )
        value = result.scalar()
        return None if value is None else aware(value)

    async def published_after(self, ticker: str, stamp: datetime, *, limit: int) -> list[Tick]:
        """The newest `limit` ticks published after `stamp`, in publish order (Last-Event-ID
        replay; the index on (ticker, received_at) serves it)."""
        ticks = self._ticks(ticker)
        result = await self.connection.execute(
            select(ticks)
            .where(ticks.c.ticker == ticker, ticks.c.received_at > stamp)
            .order_by(ticks.c.received_at.desc())
            .limit(limit)
        )
        return [tick_of(row) for row in reversed(result.all())]

    async def first_published_after(self, ticker: str, stamp: datetime) -> Tick | None:
        """The first tick published after `stamp`."""
        ticks = self._ticks(ticker)
        result = await self.connection.execute(
            select(ticks)
            .where(ticks.c.ticker == ticker, ticks.c.received_at > stamp)
            .order_by(ticks.c.received_at)
            .limit(1)
        )
        row = result.first()
        return None if row is None else tick_of(row)

    async def last_timestamp(self, ticker: str) -> int | None:
        """The newest stored timestamp of a ticker (an index lookup, not a scan)."""
        ticks = self._ticks(ticker)
        result = await self.connection.execute(
            select(func.max(ticks.c.timestamp)).where(ticks.c.ticker == ticker)
        )
        value = result.scalar()
        return None if value is None else int(value)

    async def gaps_between(self, ticker: str, start: int, end: int) -> list[Gap]:
        result = await self.connection.execute(
            select(self.gaps)
            .where(
                self.gaps.c.ticker == ticker,
                self.gaps.c.to_ts >= start,
                self.gaps.c.from_ts <= end,
            )
            .order_by(self.gaps.c.from_ts)
        )
        return [Gap(row.ticker, row.from_ts, row.to_ts, row.reason) for row in result]

    async def candles(
        self, ticker: str, width: int, source: int, first: int, end: int, *, limit: int
    ) -> Sequence[CandleRow]:
        """Up to `limit` candles of `width` ms, oldest first, as rows (start, open, high, low,
        close, ticks), built from the stored candles of width `source` (a divisor of `width`)
        that start in [first, end]: bucket-aligned bounds, so every candle is whole."""
        stored = self.tables.price_candles
        where = (
            stored.c.ticker == ticker,
            stored.c.width == source,
            stored.c.start >= first,
            stored.c.start <= end,
        )
        if width == source:
            columns = (stored.c[name] for name in ("start", "open", "high", "low", "close"))
            result: Result[Any] = await self.connection.execute(
                select(*columns, stored.c["count"].label("ticks"))
                .where(*where)
                .order_by(stored.c.start)
                .limit(limit)
            )
            return cast(Sequence[CandleRow], result.all())
        grouped = (
            select(
                (stored.c.start // width).label("bucket"),
                func.min(stored.c.start).label("first"),
                func.max(stored.c.start).label("last"),
                func.max(stored.c.high).label("high"),
                func.min(stored.c.low).label("low"),
                func.sum(stored.c["count"]).label("n"),
            )
            .where(*where)
            .group_by("bucket")
            .order_by("bucket")
            .limit(limit)
            .subquery("grouped")
        )
        opening, closing = stored.alias("opening"), stored.alias("closing")

        def of(row: Any, start: Any) -> Any:
            return and_(row.c.ticker == ticker, row.c.width == source, row.c.start == start)

        result = await self.connection.execute(
            select(
                (grouped.c.bucket * width).label("start"),
                opening.c.open,
                grouped.c.high,
                grouped.c.low,
                closing.c.close,
                grouped.c.n.label("ticks"),
            )
            .select_from(
                grouped.join(opening, of(opening, grouped.c.first)).join(
                    closing, of(closing, grouped.c.last)
                )
            )
            .order_by(grouped.c.bucket)
        )
        return cast(Sequence[CandleRow], result.all())
