"""Simulated index prices: a seeded random walk per index, its produced ticks and its chart history.

Each index ticks on its own clock, as Deribit's do: the gap to its next tick is drawn around the
mean tick interval, from a seeded generator of its own, so prices and spacing are repeatable. Every
tick is kept for `record_hours` (and at least the hour the `1h` chart needs) and folded into minute,
hour and day averages for the longer chart ranges. Time before an index's first tick is filled by a
deterministic synthetic series that ends exactly at its starting price, so every chart range is
full from the first second.

Chart spacing per range (Deribit's own is undocumented, reference §15): `1h` one point per
`chart_spacing_ms` (default a minute; 0 serves every live tick), `1d` and `2d` a minute, `1m` an
hour, `1y` and `all` a day. Each point sits on a multiple of its spacing and is the average of the
ticks from there to the next point; the newest one moves until its bucket ends.
"""

import math
import random
from dataclasses import dataclass, field

from cryptomarket.deribit.simulator.indexes import BASE_PRICES, PEGGED, decimals_for
from cryptomarket.deribit.simulator.record import TickRecord

VOLATILITY = 4e-4  # per sqrt(second): roughly BTC's intraday volatility
PEGGED_VOLATILITY = 2e-5

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# range -> (point spacing, window); the 1h spacing is the market's `chart_spacing_ms`.
CHART_RANGES: dict[str, tuple[int, int]] = {
    "1h": (MINUTE_MS, HOUR_MS),
    "1d": (MINUTE_MS, DAY_MS),
    "2d": (MINUTE_MS, 2 * DAY_MS),
    "1m": (HOUR_MS, 30 * DAY_MS),
    "1y": (DAY_MS, 365 * DAY_MS),
}
MIN_CHART_SPACING_MS = 1_000  # finer than this, only 0 (every tick)
ALL_SINCE_MS = 1_546_300_800_000  # 2019-01-01: start of the `all` range
# Synthetic history: (period, relative amplitude) of the slow waves under the noise.
_WAVES = ((DAY_MS, 0.01), (7 * DAY_MS, 0.03), (60 * DAY_MS, 0.1), (365 * DAY_MS, 0.25))
_NOISE = 5e-4


@dataclass
class _Series:
    """One index: its walk, its clock, its produced ticks and its averaged buckets."""

    name: str
    level: float  # where the walk is, unrounded
    quote: float  # the last published price
    decimals: int
    volatility: float  # per sqrt(second)
    rng: random.Random  # the walk
    timing: random.Random  # the gaps between ticks, apart so set_price leaves them alone
    waves: list[tuple[int, float, float]]  # (period, amplitude, phase)
    noise_key: int
    ticks: TickRecord
    first_ts: int | None = None  # before it, the chart is synthetic
    last_ts: int = 0
    pending: float | None = None  # set by sim/set_price, carried by the next tick
    # bucket spacing -> bucket start -> [sum, count]
    buckets: dict[int, dict[int, list[float]]] = field(
        default_factory=lambda: {MINUTE_MS: {}, HOUR_MS: {}, DAY_MS: {}}
    )


def check_chart_spacing(spacing_ms: int) -> None:
    # Finer spacings would make the synthetic part of a chart millions of points long.
    if spacing_ms != 0 and spacing_ms < MIN_CHART_SPACING_MS:
        raise ValueError(
            f"chart spacing must be 0 (every tick) or at least 1 s, not {spacing_ms} ms"
        )


class Market:
    """Every index's price; `tick(name, ...)` moves one index and returns its new tick."""

    def __init__(
        self,
        *,
        seed: int | None,
        tick_interval: float,
        started_ms: int,
        record_hours: float = 2.0,
        chart_spacing_ms: int = MINUTE_MS,
    ) -> None:
        check_chart_spacing(chart_spacing_ms)
        self.seed = seed if seed is not None else random.randrange(2**32)
        self.tick_interval = tick_interval
        self.chart_spacing_ms = chart_spacing_ms  # of the 1h range; sim/set_chart_spacing
        # The 1h chart is served from the record too, so it keeps at least an hour.
        self._keep_ms = max(HOUR_MS, int(record_hours * HOUR_MS))
        self._series = {name: self._new_series(name, base) for name, base in BASE_PRICES.items()}
        # The synthetic past ends exactly at the starting price.
        self._offsets = {name: self._shape(s, started_ms) for name, s in self._series.items()}

    def _new_series(self, name: str, base: float) -> _Series:
        # String seeds hash deterministically, so each index walks independently of the others.
        shape_rng = random.Random(f"{self.seed}:{name}:history")
        return _Series(
            name=name,
            level=base,
            quote=base,
            decimals=decimals_for(base),
            volatility=PEGGED_VOLATILITY if name in PEGGED else VOLATILITY,
            rng=random.Random(f"{self.seed}:{name}"),
            timing=random.Random(f"{self.seed}:{name}:timing"),
            waves=[
                (period, amplitude * (0.1 if name in PEGGED else 1.0), shape_rng.uniform(0, 6.3))
                for period, amplitude in _WAVES
            ],
            noise_key=shape_rng.getrandbits(64),
            ticks=TickRecord(self._keep_ms),
        )

    def __contains__(self, index_name: object) -> bool:
        return index_name in self._series

    @property
    def index_names(self) -> list[str]:
        return list(self._series)

    def price(self, index_name: str) -> float:
        """The price of the last tick (the starting price before the first tick)."""
        return self._series[index_name].quote

    def set_price(self, index_name: str, price: float) -> None:
        self._series[index_name].pending = price

    def history(self, index_name: str) -> list[tuple[int, float]]:
        """The ticks of the last hour, oldest first."""
        record = self._series[index_name].ticks
        last = record.last()
        return record.pairs(since=last[0] - HOUR_MS - 1) if last else []

    def produced(
        self, index_name: str, since: int | None = None, until: int | None = None
    ) -> tuple[list[list[float]], bool]:
        """`sim/produced`: the ticks with since < timestamp <= until, and whether none of that
        span was forgotten yet."""
        record = self._series[index_name].ticks
        return record.between(since, until), record.complete(since)

    def first_delay(self, index_name: str) -> float:
        """Seconds before the index's first tick: anywhere in one interval, so they spread."""
        return self.tick_interval * self._series[index_name].timing.random()

    def next_interval(self, index_name: str) -> float:
        """Seconds to the index's next tick: 0.5 to 1.5 times the mean interval."""
        return self.tick_interval * (0.5 + self._series[index_name].timing.random())

    def tick(self, index_name: str, now_ms: int, elapsed: float) -> tuple[int, float]:
        """Move one index a step of `elapsed` seconds; returns its tick (timestamp_ms, price)."""
        s = self._series[index_name]
        if s.pending is not None:
            s.level = s.quote = s.pending  # exactly as set, unrounded
            s.pending = None
        else:
            s.level *= math.exp(s.rng.gauss(0.0, s.volatility * math.sqrt(elapsed)))
            s.quote = round(s.level, s.decimals)
        s.last_ts = max(now_ms, s.last_ts + 1)  # strictly increasing per index
        if s.first_ts is None:
            s.first_ts = s.last_ts
        self._record(s, s.last_ts, s.quote)
        return s.last_ts, s.quote

    def _record(self, s: _Series, ts: int, price: float) -> None:
        s.ticks.append(ts, price)
        for spacing, buckets in s.buckets.items():
            bucket = buckets.get(ts - ts % spacing)
            if bucket is None:
                buckets[ts - ts % spacing] = [price, 1]
                self._trim(spacing, buckets, ts)
            else:
                bucket[0] += price
                bucket[1] += 1

    @staticmethod
    def _trim(spacing: int, buckets: dict[int, list[float]], ts: int) -> None:
        # Minute buckets serve at most 2 days, hour buckets 30 days (dicts keep insertion order).
        keep = {MINUTE_MS: 2 * DAY_MS + MINUTE_MS, HOUR_MS: 31 * DAY_MS}.get(spacing)
        if keep is not None:
            oldest = next(iter(buckets))
            if oldest < ts - keep:
                del buckets[oldest]

    def chart(self, index_name: str, chart_range: str, now_ms: int) -> list[list[float]]:
        """`public/get_index_chart_data`: chronological [timestamp_ms, price] points."""
        s = self._series[index_name]
        if chart_range == "all":
            spacing, since = DAY_MS, ALL_SINCE_MS
        else:
            spacing, window = CHART_RANGES[chart_range]
            since = now_ms - window
        if chart_range == "1h":
            spacing = self.chart_spacing_ms
            if spacing == 0:
                return s.ticks.between(since=since - 1)
        buckets = s.buckets.get(spacing) or self._averages(s, spacing, since)
        points: list[list[float]] = []
        for start in range(-(-since // spacing) * spacing, now_ms + 1, spacing):
            if start in buckets:
                total, count = buckets[start]
                points.append([start, round(total / count, s.decimals)])
            elif s.first_ts is None or start < s.first_ts:
                points.append([start, self._synthetic(s, start)])
            # Later buckets without ticks were paused: no point, like a real gap.
        return points

    @staticmethod
    def _averages(s: _Series, spacing: int, since: int) -> dict[int, list[float]]:
        """Buckets of another spacing, summed from the record on demand."""
        buckets: dict[int, list[float]] = {}
        for ts, price in s.ticks.pairs(since=since - since % spacing - 1):
            bucket = buckets.setdefault(ts - ts % spacing, [0.0, 0])
            bucket[0] += price
            bucket[1] += 1
        return buckets

    def _synthetic(self, s: _Series, ts: int) -> float:
        shape = self._shape(s, ts) - self._offsets[s.name]
        return round(BASE_PRICES[s.name] * math.exp(shape), s.decimals)

    def _shape(self, s: _Series, ts: int) -> float:
        """Log-price shape of the synthetic past: slow waves plus per-minute noise."""
        waves = sum(a * math.sin(2 * math.pi * ts / p + phase) for p, a, phase in s.waves)
        return waves + _NOISE * _unit(s.noise_key ^ (ts // MINUTE_MS))


def _unit(key: int) -> float:
    """A deterministic value in [-1, 1) from an integer (splitmix64)."""
    z = (key + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return ((z ^ (z >> 31)) / 2**63) - 1.0
