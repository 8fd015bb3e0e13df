"""Prune price history older than HISTORY_RETENTION_DAYS (unset: keep everything)."""

import time

from sqlalchemy import Engine, delete

from cryptomarket.core.tables import Tables
from cryptomarket.prices.rollups import HOUR_MS

DAY_MS = 24 * 3600 * 1000


def prune_history(engine: Engine, tables: Tables, retention_days: int | None) -> int:
    """Delete ticks (of both kinds), gaps and candles older than the retention; returns the
    ticks deleted."""
    if retention_days is None:
        return 0
    cutoff = int(time.time() * 1000) - retention_days * DAY_MS
    cutoff -= cutoff % HOUR_MS  # on an hour: no stored candle is left with part of its ticks
    gaps, candles = tables.price_gaps, tables.price_candles
    deleted = 0
    with engine.begin() as connection:
        for ticks in (tables.price_tickers, tables.instrument_ticks):
            result = connection.execute(delete(ticks).where(ticks.c.timestamp < cutoff))
            deleted += int(result.rowcount)
        connection.execute(delete(gaps).where(gaps.c.to_ts < cutoff))
        connection.execute(delete(candles).where(candles.c.start < cutoff))
    return deleted
