"""Filling missed ticks from Deribit's index history (`public/get_index_chart_data`).

Deribit serves the history of an index over a few fixed ranges (1h, 1d, 2d, 1m, 1y, all), each
reaching back from now, at a spacing it does not document (reference §15) and that may be far
coarser than live ticks. So the spacing is read from the points themselves (the median difference
of their timestamps), never assumed. A window is filled from the smallest range that reaches its
start, and only at live resolution: points spaced like live ticks are kept, and every stretch of
the window they leave uncovered is a gap; coarser points cannot stand in for the ticks between
them, so the whole window is a gap whose reason says how many points there were and how far apart.
Coarse points are neither stored nor streamed: the price table holds live-resolution ticks only.

Instruments have no such history: Deribit's `public/get_tradingview_chart_data` serves trade
candles (1 minute at the finest), not the ticker's mark, book and greeks updated every 100 ms, so
it cannot fill an instrument's window at live resolution; the window is a gap, with no call made.
"""

import logging
import math
import statistics
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from cryptomarket.deribit.errors import DeribitError, DeribitTransportError
from cryptomarket.instruments.names import is_instrument
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
# Live index ticks come about once a second (reference §6: 61 frames in 57 s). History spaced
# wider than this (or than twice the live ticks' own spacing, when the caller has seen it) is
# not live resolution; within it, a stretch longer than the larger of this and three spacings
# without a point is a hole.
LIVE_SPACING_MS = 2_000
LIVE_FACTOR = 2
HOLE_SPACINGS = 3
# Every gap reason written after history was consulted starts so: the gap job need not retry it,
# since older windows are only ever served coarser.
HISTORY_CHECKED = "Deribit's history"
FAILED_PREFIX = "backfill failed"
NO_INSTRUMENT_HISTORY = "none"  # the range name of an instrument's (empty) history


@dataclass(frozen=True)
class Filled:
    """What a window's backfill found: live-resolution ticks to store and publish, the gaps
    left, and how many coarse points were seen (and dropped)."""

    ticks: list[Tick] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    coarse: int = 0
    spacing_ms: int | None = None  # of the history read, when known


def merge(parts: Sequence[Filled]) -> Filled:
    """Several windows' results as one."""
    return Filled(
        ticks=[tick for part in parts for tick in part.ticks],
        gaps=[gap for part in parts for gap in part.gaps],
        coarse=sum(part.coarse for part in parts),
        spacing_ms=next((part.spacing_ms for part in parts if part.spacing_ms), None),
    )


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
    """Well-formed points, oldest first, one per timestamp."""
    ticks: dict[int, Tick] = {}
    for point in points:
        try:
            timestamp, price = int(point[0]), float(point[1])
        except (IndexError, KeyError, TypeError, ValueError, OverflowError):
            continue
        if timestamp > 0 and math.isfinite(price):
            ticks[timestamp] = Tick(ticker, price, timestamp)
    return [ticks[ts] for ts in sorted(ticks)]


def spacing_of(points: Sequence[Tick]) -> int | None:
    """The typical distance between points (the median difference), None below two points."""
    if len(points) < 2:
        return None
    return round(statistics.median(b.timestamp - a.timestamp for a, b in pairwise(points)))


def describe_spacing(spacing_ms: int | None) -> str:
    if spacing_ms is None:
        return "unknown spacing"
    return f"{spacing_ms / 1000:g} s apart"


def cover(
    ticker: str,
    points: Sequence[Tick],
    since: int,
    until: int,
    range_name: str,
    *,
    live_spacing_ms: float | None = None,
) -> Filled:
    """What of the window strictly between `since` and `until` (ms) the history fills at live
    resolution, and the gaps (inclusive ms bounds) for the rest. `live_spacing_ms`: how far
    apart this ticker's live ticks come, if known."""
    if until - since < 2:
        return Filled()
    if range_name == NO_INSTRUMENT_HISTORY:
        reason = f"{HISTORY_CHECKED} of an instrument is trade candles, not its ticker: not filled"
        return Filled([], [Gap(ticker, since + 1, until - 1, reason)])
    first = bisect_right([tick.timestamp for tick in points], since)
    inside = [tick for tick in points[first:] if tick.timestamp < until]
    # Spacing where the window is: its points and one neighbour each side (the whole range when
    # that is too few), so a range that is finer near now than further back is read right.
    # (An empty or nearly empty window adds a few more neighbours: its two edges alone would
    # read the window's own length as the spacing.)
    reach = 1 if len(inside) >= 3 else 5
    local = points[max(0, first - reach) : first + len(inside) + reach]
    spacing = spacing_of(local) if len(local) >= 2 else spacing_of(points)
    finest = LIVE_SPACING_MS if live_spacing_ms is None else LIVE_FACTOR * live_spacing_ms
    if spacing is None or spacing > min(LIVE_SPACING_MS, finest):
        reason = (
            f"{HISTORY_CHECKED} ({range_name}) has {len(inside)} point(s) here, "
            f"{describe_spacing(spacing)}: coarser than live ticks, not stored"
        )
        return Filled([], [Gap(ticker, since + 1, until - 1, reason)], len(inside), spacing)
    hole = max(LIVE_SPACING_MS, HOLE_SPACINGS * spacing)
    known = [since, *(tick.timestamp for tick in inside), until]
    gaps = [
        Gap(
            ticker,
            before + 1,
            after - 1,
            f"{HISTORY_CHECKED} ({range_name}, {describe_spacing(spacing)}) has no tick "
            f"for {(after - before) / 1000:g} s here",
        )
        for before, after in pairwise(known)
        if after - before > hole
    ]
    return Filled(inside, gaps, 0, spacing)


async def fetch_points(history: ChartSource, ticker: str, span_ms: int) -> tuple[list[Tick], str]:
    """The points of the smallest range reaching `span_ms` back, and that range's name."""
    if is_instrument(ticker):
        return [], NO_INSTRUMENT_HISTORY
    range_name = range_for(span_ms)
    return parse_points(ticker, await history(ticker, range_name)), range_name


def failed(ticker: str, since: int, until: int, why: str) -> Filled:
    """The whole window as a gap the gap job will retry."""
    if until - since < 2:
        return Filled()
    return Filled(gaps=[Gap(ticker, since + 1, until - 1, f"{FAILED_PREFIX}: {why}"[:200])])


async def fill_window(
    history: ChartSource,
    ticker: str,
    since: int,
    until: int,
    *,
    now: int | None = None,
    live_spacing_ms: float | None = None,
) -> Filled:
    """Backfill the window strictly between `since` and `until`. Deribit's ranges reach back
    from now: give `now` when the window ends before it."""
    if until - since < 2:
        return Filled()
    try:
        points, range_name = await fetch_points(history, ticker, max(until, now or until) - since)
    except (DeribitError, DeribitTransportError) as error:
        logger.warning("%s: history unavailable for backfill: %s", ticker, error)
        return failed(ticker, since, until, str(error))
    return cover(ticker, points, since, until, range_name, live_spacing_ms=live_spacing_ms)
