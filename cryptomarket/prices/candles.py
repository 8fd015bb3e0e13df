"""Candle resolutions (Deribit's own), and marking the candles a recorded gap touches.

A candle covers one UTC bucket [start, start + width): buckets are multiples of their width
since the epoch, so every resolution up to a day lines up with days. Candles up to 30 minutes
are read from the per-minute rollups, coarser ones from the per-hour rollups (prices/rollups.py).
"""

from collections.abc import Iterable, Sequence

from cryptomarket.core.errors import InvalidInput
from cryptomarket.prices.models import Gap
from cryptomarket.prices.rollups import HOUR_MS, MINUTE_MS

# Deribit's resolutions for public/get_tradingview_chart_data, in minutes.
RESOLUTIONS: dict[str, int] = {
    **{str(minutes): minutes for minutes in (1, 3, 5, 10, 15, 30, 60, 120, 180, 360, 720)},
    "1D": 1440,
}
RESOLUTION_HELP = ", ".join(RESOLUTIONS)


def parse_resolution(resolution: str) -> tuple[str, int]:
    """A resolution's name and bucket width in ms; 422 with the accepted values otherwise."""
    name = resolution.strip().upper()
    minutes = RESOLUTIONS.get(name)
    if minutes is None:
        raise InvalidInput(
            f"resolution {resolution[:16]!r} is not one of Deribit's: {RESOLUTION_HELP} "
            "(minutes, or 1D for a day)",
            code="invalid_resolution",
        )
    return name, minutes * MINUTE_MS


def rollup_width(width: int) -> int:
    """Which stored candles a resolution is built from: minutes below an hour, else hours."""
    return MINUTE_MS if width < HOUR_MS else HOUR_MS


def bucket_start(timestamp: int, width: int) -> int:
    return timestamp - timestamp % width


def touched_by_gaps(starts: Sequence[int], width: int, gaps: Iterable[Gap]) -> list[bool]:
    """For each candle start (ascending), whether a gap overlaps its bucket."""
    spans = _merged((gap.from_ts, gap.to_ts) for gap in gaps)
    touched = []
    index = 0
    for start in starts:
        end = start + width - 1
        while index < len(spans) and spans[index][1] < start:
            index += 1
        touched.append(index < len(spans) and spans[index][0] <= end)
    return touched


def _merged(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping [from, to] spans joined, sorted."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged
