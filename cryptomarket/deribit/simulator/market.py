"""Simulated index prices: a seeded random walk per index, its recent ticks and its chart history.

Live ticks are kept for the last hour (every one of them, so a client can backfill missed ticks
exactly) and folded into minute, hour and day averages for the longer chart ranges. Time before the
simulator started is filled by a deterministic synthetic series that ends exactly at the first
live price, so every chart range is full from the first second.
"""

import math
import random
from dataclasses import dataclass, field

from cryptomarket.deribit.simulator.record import TickRecord

# Reference §5.2: the documented enum (47 names), with rough real-world price levels.
BASE_PRICES: dict[str, float] = {
    "btc_usd": 95_000.0,
    "eth_usd": 3_500.0,
    "ada_usdc": 0.7,
    "algo_usdc": 0.2,
    "avax_usdc": 25.0,
    "bch_usdc": 450.0,
    "bnb_usdc": 650.0,
    "btc_usdc": 95_000.0,
    "btcdvol_usdc": 50.0,
    "buidl_usdc": 1.0,
    "doge_usdc": 0.2,
    "dot_usdc": 5.0,
    "eurr_usdc": 1.08,
    "eth_usdc": 3_500.0,
    "ethdvol_usdc": 65.0,
    "link_usdc": 15.0,
    "ltc_usdc": 90.0,
    "near_usdc": 3.0,
    "paxg_usdc": 2_600.0,
    "shib_usdc": 0.00002,
    "sol_usdc": 180.0,
    "steth_usdc": 3_500.0,
    "ton_usdc": 3.0,
    "trump_usdc": 10.0,
    "trx_usdc": 0.25,
    "uni_usdc": 8.0,
    "usde_usdc": 1.0,
    "usyc_usdc": 1.1,
    "xrp_usdc": 2.2,
    "btc_usdt": 95_000.0,
    "eth_usdt": 3_500.0,
    "eurr_usdt": 1.08,
    "sol_usdt": 180.0,
    "steth_usdt": 3_500.0,
    "usdc_usdt": 1.0,
    "usde_usdt": 1.0,
    "btc_eurr": 88_000.0,
    "btc_usde": 95_000.0,
    "btc_usyc": 86_000.0,
    "eth_btc": 0.037,
    "eth_eurr": 3_240.0,
    "eth_usde": 3_500.0,
    "eth_usyc": 3_180.0,
    "steth_eth": 1.0,
    "paxg_btc": 0.027,
    "drbfix-btc_usdc": 95_000.0,
    "drbfix-eth_usdc": 3_500.0,
}
INDEX_NAMES: tuple[str, ...] = tuple(BASE_PRICES)
# Stablecoin and wrapped-asset pairs barely move.
PEGGED = frozenset(
    {"buidl_usdc", "eurr_usdc", "eurr_usdt", "usde_usdc", "usde_usdt", "usyc_usdc", "usdc_usdt"}
    | {"steth_eth"}
)
# Indices with futures and options, for get_index_price_names(extended=true).
COMBO_ENABLED = frozenset({"btc_usd", "eth_usd", "btc_usdc", "eth_usdc"})

VOLATILITY = 4e-4  # per sqrt(second): roughly BTC's intraday volatility
PEGGED_VOLATILITY = 2e-5

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# range -> (point spacing, window); spacing 0 means every live tick.
CHART_RANGES: dict[str, tuple[int, int]] = {
    "1h": (0, HOUR_MS),
    "1d": (MINUTE_MS, DAY_MS),
    "2d": (MINUTE_MS, 2 * DAY_MS),
    "1m": (HOUR_MS, 30 * DAY_MS),
    "1y": (DAY_MS, 365 * DAY_MS),
}
ALL_SINCE_MS = 1_546_300_800_000  # 2019-01-01: start of the `all` range
# Synthetic history: (period, relative amplitude) of the slow waves under the noise.
_WAVES = ((DAY_MS, 0.01), (7 * DAY_MS, 0.03), (60 * DAY_MS, 0.1), (365 * DAY_MS, 0.25))
_NOISE = 5e-4


def decimals_for(price: float) -> int:
    """Quote precision: cents above 1, about five significant digits below."""
    return 2 if price >= 1 else 4 - math.floor(math.log10(price))


@dataclass
class _Series:
    """One index: its walk, its last hour of ticks and its averaged buckets."""

    name: str
    level: float  # where the walk is, unrounded
    quote: float  # the last published price
    decimals: int
    sigma: float
    rng: random.Random
    waves: list[tuple[int, float, float]]  # (period, amplitude, phase)
    noise_key: int
    last_ts: int = 0
    pending: float | None = None  # set by sim/set_price, carried by the next tick
    ticks: TickRecord = field(default_factory=lambda: TickRecord(HOUR_MS))
    # bucket spacing -> bucket start -> [sum, count]
    buckets: dict[int, dict[int, list[float]]] = field(
        default_factory=lambda: {MINUTE_MS: {}, HOUR_MS: {}, DAY_MS: {}}
    )


class Market:
    """Every index's price; `tick()` moves them all and returns the new ticks."""

    def __init__(
        self,
        *,
        seed: int | None,
        tick_interval: float,
        started_ms: int,
        record_hours: float = 2.0,
    ) -> None:
        self.seed = seed if seed is not None else random.randrange(2**32)
        self.first_tick_ms: int | None = None  # before it, the chart is synthetic
        # The 1h chart is served from the record too, so it keeps at least an hour.
        self._keep_ms = max(HOUR_MS, int(record_hours * HOUR_MS))
        self._series = {
            name: self._new_series(name, base, tick_interval) for name, base in BASE_PRICES.items()
        }
        # The synthetic past ends exactly at the starting price.
        self._offsets = {name: self._shape(s, started_ms) for name, s in self._series.items()}

    def _new_series(self, name: str, base: float, tick_interval: float) -> _Series:
        volatility = PEGGED_VOLATILITY if name in PEGGED else VOLATILITY
        # String seeds hash deterministically, so each index walks independently of the others.
        shape_rng = random.Random(f"{self.seed}:{name}:history")
        return _Series(
            name=name,
            level=base,
            quote=base,
            decimals=decimals_for(base),
            sigma=volatility * math.sqrt(tick_interval),
            rng=random.Random(f"{self.seed}:{name}"),
            waves=[
                (period, amplitude * (0.1 if name in PEGGED else 1.0), shape_rng.uniform(0, 6.3))
                for period, amplitude in _WAVES
            ],
            noise_key=shape_rng.getrandbits(64),
            ticks=TickRecord(self._keep_ms),
        )

    def __contains__(self, index_name: object) -> bool:
        return index_name in self._series

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

    def tick(self, now_ms: int) -> list[tuple[str, int, float]]:
        """Move every index one step; returns (index_name, timestamp_ms, price) per index."""
        out = []
        for s in self._series.values():
            if s.pending is not None:
                s.level = s.quote = s.pending  # exactly as set, unrounded
                s.pending = None
            else:
                s.level *= math.exp(s.rng.gauss(0.0, s.sigma))
                s.quote = self._quote(s, s.level)
            s.last_ts = max(now_ms, s.last_ts + 1)  # strictly increasing per index
            self._record(s, s.last_ts, s.quote)
            out.append((s.name, s.last_ts, s.quote))
        if self.first_tick_ms is None and out:
            self.first_tick_ms = out[0][1]
        return out

    def _quote(self, s: _Series, price: float) -> float:
        return round(price, s.decimals)

    def _record(self, s: _Series, ts: int, price: float) -> None:
        s.ticks.append(ts, price)
        for spacing, buckets in s.buckets.items():
            bucket = buckets.setdefault(ts - ts % spacing, [0.0, 0])
            bucket[0] += price
            bucket[1] += 1
        # Minute buckets serve at most 2 days, hour buckets 30 days (dicts keep insertion order).
        for spacing, keep in ((MINUTE_MS, 2 * DAY_MS + MINUTE_MS), (HOUR_MS, 31 * DAY_MS)):
            buckets = s.buckets[spacing]
            oldest = next(iter(buckets))
            if oldest < ts - keep:
                del buckets[oldest]

    def chart(self, index_name: str, chart_range: str, now_ms: int) -> list[list[float]]:
        """`public/get_index_chart_data`: chronological [timestamp_ms, price] points."""
        s = self._series[index_name]
        if chart_range == "1h":
            return s.ticks.between(since=now_ms - HOUR_MS - 1)
        if chart_range == "all":
            spacing, since = DAY_MS, ALL_SINCE_MS
        else:
            spacing, window = CHART_RANGES[chart_range]
            since = now_ms - window
        buckets = s.buckets[spacing]
        points: list[list[float]] = []
        for start in range(-(-since // spacing) * spacing, now_ms + 1, spacing):
            if start in buckets:
                total, count = buckets[start]
                points.append([start, self._quote(s, total / count)])
            elif self.first_tick_ms is None or start < self.first_tick_ms:
                points.append([start, self._synthetic(s, start)])
            # Later buckets without ticks were paused: no point, like a real gap.
        return points

    def _synthetic(self, s: _Series, ts: int) -> float:
        return self._quote(
            s, BASE_PRICES[s.name] * math.exp(self._shape(s, ts) - self._offsets[s.name])
        )

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
