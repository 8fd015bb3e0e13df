"""Backfill recorded gaps (table price_gaps) from Deribit's index history.

Each gap is fetched from the smallest chart range that reaches back to it. The ticks found at live
resolution are stored (idempotently) and the gap is replaced by what they do not cover, if
anything, with a reason saying history was checked. Such gaps are not looked at again: a window
only gets older, and older history is never finer, so a retry could not fill more. A gap whose
history could not be fetched stays as it is for the next run.
"""

import logging
import statistics
import time
from itertools import pairwise

from sqlalchemy import Connection, Engine, delete, select

from cryptomarket.core.config import Settings
from cryptomarket.core.tables import Tables
from cryptomarket.deribit.pool import DeribitPool
from cryptomarket.jobs.deribit import with_deribit
from cryptomarket.prices.backfill import (
    FAILED_PREFIX,
    HISTORY_CHECKED,
    RANGES,
    Filled,
    chart_source,
    fill_window,
)
from cryptomarket.prices.kinds import kind_of
from cryptomarket.prices.models import Gap
from cryptomarket.prices.repository import store_ticks, upsert_gap

logger = logging.getLogger("cryptomarket.jobs.gaps")

GAPS_PER_RUN = 50
LIVE_SAMPLE = 20  # stored ticks read to learn a ticker's live spacing
REACH_MS = RANGES[-2][1]  # older gaps than Deribit's yearly range are beyond repair


def backfill_gaps(settings: Settings, engine: Engine, tables: Tables) -> int:
    """Fill what Deribit still has of the recorded gaps; returns the ticks stored."""
    now = int(time.time() * 1000)
    column = tables.price_gaps.c
    with engine.connect() as connection:
        rows = connection.execute(
            select(column.id, column.ticker, column.from_ts, column.to_ts, column.reason)
            .where(column.to_ts > now - REACH_MS, column.reason.not_like(f"{HISTORY_CHECKED}%"))
            .order_by(column.to_ts.desc())
            .limit(GAPS_PER_RUN)
        ).all()
    if not rows:
        return 0
    gaps = [(row.id, Gap(row.ticker, row.from_ts, row.to_ts, row.reason)) for row in rows]
    with engine.connect() as connection:
        spacings = [live_spacing(connection, tables, gap.ticker, gap.from_ts) for _, gap in gaps]

    async def fetch(pool: DeribitPool) -> list[tuple[int, Filled]]:
        history = chart_source(pool.call)
        results = []
        for (gap_id, gap), spacing in zip(gaps, spacings, strict=True):
            window = (gap.from_ts - 1, gap.to_ts + 1)
            filled = await fill_window(
                history, gap.ticker, *window, now=now, live_spacing_ms=spacing
            )
            results.append((gap_id, filled))
        return results

    stored = 0
    dialect = engine.dialect.name
    bounds = {gap_id: (gap.from_ts, gap.to_ts) for gap_id, gap in gaps}
    for gap_id, filled in with_deribit(settings, fetch):
        if any(rest.reason.startswith(FAILED_PREFIX) for rest in filled.gaps):
            continue  # Deribit did not answer: try again next run
        with engine.begin() as connection:
            store_ticks(connection, tables, filled.ticks)
            # Replaced only as read: the writer may have widened it meanwhile (its span then
            # reaches past the window filled here, and the next run looks at it again).
            replaced = connection.execute(
                delete(tables.price_gaps).where(
                    column.id == gap_id,
                    column.from_ts == bounds[gap_id][0],
                    column.to_ts == bounds[gap_id][1],
                )
            )
            if replaced.rowcount:
                for rest in filled.gaps:
                    connection.execute(upsert_gap(tables, dialect, rest))
        stored += len(filled.ticks)
    logger.info("gap backfill: %d gap(s) looked at, %d tick(s) stored", len(gaps), stored)
    return stored


def live_spacing(connection: Connection, tables: Tables, ticker: str, before: int) -> float | None:
    """How far apart the ticker's stored ticks just before `before` are (the median), so history
    much coarser than the live ticks is not taken for them."""
    column = kind_of(ticker).table(tables).c
    stamps = connection.execute(
        select(column.timestamp)
        .where(column.ticker == ticker, column.timestamp < before)
        .order_by(column.timestamp.desc())
        .limit(LIVE_SAMPLE + 1)
    ).scalars()
    diffs = [newer - older for newer, older in pairwise(stamps)]
    return statistics.median(diffs) if diffs else None
