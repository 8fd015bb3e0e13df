"""Prune price history older than HISTORY_RETENTION_DAYS (unset: keep everything)."""

import time

from sqlalchemy import Engine, delete

from cryptomarket.core.tables import Tables

DAY_MS = 24 * 3600 * 1000


def prune_history(engine: Engine, tables: Tables, retention_days: int | None) -> int:
    """Delete ticks (and gaps) older than the retention; returns the ticks deleted."""
    if retention_days is None:
        return 0
    cutoff = int(time.time() * 1000) - retention_days * DAY_MS
    ticks, gaps = tables.price_tickers, tables.price_gaps
    with engine.begin() as connection:
        result = connection.execute(delete(ticks).where(ticks.c.timestamp < cutoff))
        connection.execute(delete(gaps).where(gaps.c.to_ts < cutoff))
    return int(result.rowcount)
