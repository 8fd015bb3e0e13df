"""Filling missed ticks from Deribit's index history (`public/get_index_chart_data`).

Deribit serves the history of an index over a few fixed ranges (1h, 1d, 2d, 1m, 1y, all), each
reaching back from now. A window of missed ticks is filled from the smallest range that reaches
its start; whatever lies before the oldest point Deribit returns is a gap.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cryptomarket.deribit.errors import DeribitError, DeribitTransportError
from cryptomarket.prices.models import Gap, Tick

logger = logging.getLogger("cryptomarket.prices.backfill")

ChartSource = Callable[[str, str], Awaitable[list[Any]]]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# Deribit's chart ranges and how far back each reaches.
RANGES: tuple[tuple[str, int], ...] = (
    ("1h", HOUR_MS),
    ("1d", DAY_MS),
    ("2d", 2 * DAY_MS),
    ("1m", 30 * DAY_MS),
    ("1y", 365 * DAY_MS),
    ("all", 100 * 365 * DAY_MS),
)
RANGE_NAMES = tuple(name for name, _ in RANGES)
# Ticks come about once a second: history that starts this close to the window's start covers it.
QUIET_MS = 2_000


def range_for(span_ms: int) -> str:
    """The smallest chart range that reaches `span_ms` back from now."""
    for name, reach in RANGES:
        if span_ms <= reach:
            return name
    return "all"


def chart_source(call: Callable[..., Awaitable[Any]]) -> ChartSource:
    """A ChartSource over a Deribit call function (a pool's or a connection's `call`)."""

    async def fetch(ticker: str, range_name: str) -> list[Any]:
        result = await call(
            "public/get_index_chart_data", {"index_name": ticker, "range": range_name}
        )
        return list(result or [])

    return fetch


def parse_points(ticker: str, points: list[Any]) -> list[Tick]:
    ticks = []
    for point in points:
        try:
            timestamp, price = int(point[0]), float(point[1])
        except (IndexError, TypeError, ValueError):
            continue
        ticks.append(Tick(ticker, price, timestamp))
    return ticks


async def fill_window(
    history: ChartSource, ticker: str, since: int, until: int, *, now: int | None = None
) -> tuple[list[Tick], Gap | None]:
    """The ticks Deribit still has strictly between `since` and `until`, and the gap if any.
    Deribit's ranges reach back from now: give `now` when the window ends before it."""
    if until <= since:
        return [], None
    now_span = max(until, now or until) - since
    try:
        points = parse_points(ticker, await history(ticker, range_for(now_span)))
    except (DeribitError, DeribitTransportError) as error:
        logger.warning("%s: history unavailable for backfill: %s", ticker, error)
        return [], Gap(ticker, since + 1, until - 1, f"backfill failed: {error}"[:200])
    filled = [tick for tick in points if since < tick.timestamp < until]
    oldest = min((tick.timestamp for tick in points), default=until)
    if oldest > since + QUIET_MS:
        reason = "Deribit's history does not reach back that far"
        return filled, Gap(ticker, since + 1, oldest - 1, reason)
    return filled, None
