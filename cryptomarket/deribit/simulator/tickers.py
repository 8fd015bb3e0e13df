"""Simulated instrument tickers (reference §13): a book, a mark and 24 h statistics per instrument,
moving with its index walk.

A perpetual's mark sits a small mean-reverting premium off its index (the premium is its funding);
a dated future's adds a 5 % a year basis to expiry; an option is priced by Black-Scholes on that
forward at a volatility of its own (inverse options in coin, linear ones in USDC). The book is a
spread of a few ticks around the mark, `last_price` follows trades against it. Each update is one
`data` object as the `ticker.{instrument}.{interval}` channel and `public/ticker` carry it, with the
keys of its kind. An expiring instrument sends the two frames captures show (§13.4): one still
`open` with `estimated_delivery_price: "expired"` and zero greeks, then the `closed` one with the
`delivery_price`, no `settlement_price`; then nothing more.
"""

import math
import random
from dataclasses import dataclass
from typing import Any

from cryptomarket.deribit.simulator.indexes import decimals_for
from cryptomarket.deribit.simulator.instruments import Instrument

YEAR_MS = 365 * 86_400_000
BASIS_PER_YEAR = 0.05
VOLATILITY = {"BTC": 0.55, "ETH": 0.65, "SOL": 0.85}
PREMIUM_STEP = 2e-5  # per update, of the perpetual premium's walk
PREMIUM_PULL = 0.02  # its pull back towards 0, per update
BAND = 0.015  # min_price / max_price: mark -+ 1.5 %


@dataclass
class Book:
    """One instrument's moving state."""

    rng: random.Random
    premium: float = 0.0
    open_interest: float = 0.0
    last_price: float | None = None
    first_mark: float | None = None  # for the 24 h change
    high: float | None = None
    low: float | None = None
    volume: float = 0.0
    last_ts: int = 0
    settlement_price: float | None = None
    interest_value: float = 0.0


def new_book(seed: int, instrument: Instrument) -> Book:
    rng = random.Random(f"{seed}:{instrument.name}")
    return Book(rng=rng, open_interest=rng.uniform(1e3, 1e6) * instrument.family.contract_size)


def _round_to(value: float, step: float) -> float:
    decimals = max(0, -math.floor(math.log10(step)) + 1) if step < 1 else 1
    return round(round(value / step) * step, decimals)


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _normal_pdf(x: float) -> float:
    return math.exp(-x * x / 2.0) / math.sqrt(2.0 * math.pi)


def forward(instrument: Instrument, index: float, now_ms: int) -> float:
    if instrument.perpetual:
        return index
    years = max(instrument.expiry_ms - now_ms, 0) / YEAR_MS
    return index * math.exp(BASIS_PER_YEAR * years)


def option_values(
    instrument: Instrument, underlying: float, now_ms: int, vol: float
) -> tuple[float, dict[str, float]]:
    """(price in USD, greeks) by Black-Scholes at zero rates on the forward `underlying`."""
    strike = float(instrument.strike or 0.0)
    years = max(instrument.expiry_ms - now_ms, 1) / YEAR_MS
    root = vol * math.sqrt(years)
    d1 = (math.log(underlying / strike) + root * root / 2) / root
    d2 = d1 - root
    call = instrument.option_type == "call"
    if call:
        price = underlying * _normal_cdf(d1) - strike * _normal_cdf(d2)
        delta = _normal_cdf(d1)
    else:
        price = strike * _normal_cdf(-d2) - underlying * _normal_cdf(-d1)
        delta = _normal_cdf(d1) - 1.0
    gamma = _normal_pdf(d1) / (underlying * root)
    vega = underlying * _normal_pdf(d1) * math.sqrt(years) / 100  # per vol point
    theta = -underlying * _normal_pdf(d1) * vol / (2 * math.sqrt(years)) / 365  # per day
    rho = (1 if call else -1) * strike * years * _normal_cdf(d2 if call else -d2) / 100
    greeks = {
        "delta": round(delta, 5),
        "gamma": round(gamma, 5),
        "vega": round(vega, 5),
        "theta": round(theta, 5),
        "rho": round(rho, 5),
    }
    return max(price, 0.0), greeks


def update(book: Book, instrument: Instrument, index: float, now_ms: int) -> dict[str, Any]:
    """Move the book one step and return its ticker `data`."""
    rng = book.rng
    book.last_ts = max(now_ms, book.last_ts + 1)
    book.premium += rng.gauss(0.0, PREMIUM_STEP) - PREMIUM_PULL * book.premium
    family = instrument.family
    under = forward(instrument, index, now_ms) * (1.0 + book.premium)
    data: dict[str, Any] = {"timestamp": book.last_ts, "state": "open"}
    if instrument.kind == "option":
        vol = VOLATILITY.get(family.base, 0.7) * (1.0 + rng.gauss(0.0, 0.002))
        usd, greeks = option_values(instrument, under, now_ms, vol)
        mark = usd if family.linear else usd / index  # inverse options are priced in coin
        tick = 0.0001
        mark = max(round(mark, 6 if not family.linear else 4), tick)
        iv = round(vol * 100, 2)
        data.update(
            greeks=greeks,
            mark_iv=iv,
            bid_iv=round(iv - 1.5, 2),
            ask_iv=round(iv + 1.5, 2),
            underlying_price=round(under, decimals_for(under)),
            underlying_index="index_price" if family.linear else instrument.name.rsplit("-", 2)[0],
            interest_rate=0.0,
        )
    else:
        tick = family.tick_size
        mark = round(under, decimals_for(under) + 1)
    spread = tick * rng.randint(1, 4)
    bid = max(_round_to(mark - spread / 2, tick), tick)
    ask = _round_to(mark + spread / 2, tick)
    # A deep out-of-the-money option (marked at the minimum tick) has no bids and does not
    # trade: its bid side is empty (0.0, as every capture shows it) and, never traded, its
    # last price and 24 h stats are null (reference 13.2).
    worthless = instrument.kind == "option" and mark <= tick
    if worthless:
        bid = 0.0
    elif book.last_price is None or rng.random() < 0.3:  # a trade, at one side of the book
        book.last_price = ask if rng.random() < 0.5 else bid
        book.volume += rng.uniform(0.1, 5.0) * family.contract_size
    book.first_mark = book.first_mark or mark
    book.high = max(book.high or mark, mark)
    book.low = min(book.low or mark, mark)
    book.settlement_price = book.settlement_price or mark
    book.open_interest = max(0.0, book.open_interest * (1 + rng.gauss(0.0, 1e-4)))
    amount = family.min_trade_amount if instrument.kind == "future" else 0.1
    data.update(
        instrument_name=instrument.name,
        mark_price=mark,
        index_price=index,
        last_price=book.last_price,
        best_bid_price=bid,
        best_ask_price=ask,
        best_bid_amount=0.0 if worthless else round(amount * rng.randint(1, 500), 6),
        best_ask_amount=round(amount * rng.randint(1, 500), 6),
        open_interest=round(book.open_interest, 4),
        min_price=_round_to(mark * (1 - BAND), tick),
        max_price=_round_to(mark * (1 + BAND), tick),
        settlement_price=book.settlement_price,
        estimated_delivery_price=index,
        stats=_stats(book, index, family.linear),
    )
    if instrument.perpetual:
        book.interest_value += book.premium / 8
        data.update(
            current_funding=round(book.premium, 8),
            funding_8h=round(book.premium / 3, 8),
            interest_value=book.interest_value,
        )
    return data


def _stats(book: Book, index: float, linear: bool) -> dict[str, Any]:
    if book.last_price is None:  # never traded
        nothing = None
        return dict.fromkeys(("high", "low", "price_change", "volume_usd"), nothing) | {
            "volume": 0.0,
            "volume_notional": nothing,
        }
    change = 0.0
    if book.first_mark and book.last_price:
        change = round((book.last_price / book.first_mark - 1) * 100, 4)
    volume = round(book.volume, 8)
    usd = round(volume * (1 if linear else index), 2)
    return {
        "high": book.high,
        "low": book.low,
        "price_change": change,
        "volume": volume,
        "volume_usd": usd,
        "volume_notional": usd,
    }


def expiry_frames(
    data: dict[str, Any], instrument: Instrument, index: float
) -> list[dict[str, Any]]:
    """The last two `data` objects of an expiring instrument, after its latest update `data`."""
    first = {**data, "timestamp": data["timestamp"] + 1, "estimated_delivery_price": "expired"}
    if "greeks" in first:
        first["greeks"] = dict.fromkeys(first["greeks"], 0.0)
    final = {**first, "timestamp": first["timestamp"] + 1, "state": "closed"}
    final.pop("settlement_price", None)
    final.update(
        delivery_price=index,
        open_interest=0.0,
        best_bid_price=0.0,
        best_ask_price=0.0,
        best_bid_amount=0.0,
        best_ask_amount=0.0,
    )
    if instrument.kind == "option":
        strike = float(instrument.strike or 0.0)
        intrinsic = (
            max(index - strike, 0.0)
            if instrument.option_type == "call"
            else max(strike - index, 0.0)
        )
        final["mark_price"] = round(intrinsic if instrument.family.linear else intrinsic / index, 6)
    else:
        final["mark_price"] = index
    return [first, final]
