"""Simulated Deribit instruments: what `public/get_instruments` lists (reference §12).

Inverse BTC and ETH perpetuals, dated futures and options, and linear USDC perpetuals, a dated
future and options, with expiries like Deribit's (08:00 UTC: the next two days, the next two
Fridays, the last Friday of this and the next month, of the next quarter). As expiries pass the
listing moves on: an expired instrument goes to the `expired=true` list and the next date of its
series is listed. `sim/expire_instrument` expires one at once.
"""

import calendar
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

PERPETUAL_EXPIRY_MS = 32_503_708_800_000  # 3000-01-01T08:00Z, Deribit's sentinel
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
EXPIRED_KEPT = 200  # recently expired instruments `expired=true` lists


@dataclass(frozen=True)
class Family:
    """One underlying's products: inverse (coin-settled, names without a quote) or linear."""

    base: str
    index: str  # the price index its instruments follow
    linear: bool
    tick_size: float
    contract_size: float
    min_trade_amount: float
    strike_step: float  # 0: no options
    futures: bool = True  # dated futures besides the perpetual


FAMILIES = (
    Family("BTC", "btc_usd", False, 0.5, 10.0, 10.0, 1000.0),
    Family("ETH", "eth_usd", False, 0.05, 1.0, 1.0, 50.0),
    Family("BTC", "btc_usdc", True, 0.1, 0.0001, 0.0001, 0.0, futures=False),
    Family("ETH", "eth_usdc", True, 0.01, 0.001, 0.001, 0.0, futures=False),
    Family("SOL", "sol_usdc", True, 0.01, 0.1, 0.1, 5.0),
    Family("XRP", "xrp_usdc", True, 0.0001, 1.0, 1.0, 0.0, futures=False),
)
OPTION_EXPIRIES = 3  # the nearest expiries carry options
STRIKES_EACH_SIDE = 2
WINGS = (0.25, 4.0)  # far strikes, as factors of the index: no bids, no trades


@dataclass
class Instrument:
    name: str
    family: Family
    kind: str  # future or option
    expiry_ms: int  # PERPETUAL_EXPIRY_MS for a perpetual
    settlement_period: str
    instrument_id: int
    created_ms: int
    strike: float | None = None
    option_type: str | None = None  # call or put
    state: str = "open"
    expired_ms: int | None = None

    @property
    def perpetual(self) -> bool:
        return self.expiry_ms >= PERPETUAL_EXPIRY_MS

    @property
    def currency(self) -> str:
        """What `currency=` finds it under: its settlement currency."""
        return "USDC" if self.family.linear else self.family.base

    def row(self) -> dict[str, Any]:
        """The instrument object, with the keys a production row carries (§12.2)."""
        family = self.family
        quote = "USDC" if family.linear else ("USD" if self.kind == "future" else family.base)
        row: dict[str, Any] = {
            "instrument_name": self.name,
            "instrument_id": self.instrument_id,
            "kind": self.kind,
            "instrument_type": "linear" if family.linear else "reversed",
            "base_currency": family.base,
            "quote_currency": quote,
            "counter_currency": "USDC" if family.linear else "USD",
            "settlement_currency": self.currency,
            "settlement_period": self.settlement_period,
            "price_index": family.index,
            "expiration_timestamp": self.expiry_ms,
            "creation_timestamp": self.created_ms,
            "is_active": self.state == "open",
            "state": self.state,
            "tick_size": family.tick_size if self.kind == "future" else 0.0001,
            "tick_size_steps": []
            if self.kind == "future"
            else [{"above_price": 0.005, "tick_size": 0.0005}],
            "contract_size": family.contract_size if self.kind == "future" else 1.0,
            "min_trade_amount": family.min_trade_amount if self.kind == "future" else 0.1,
            "maker_commission": 0.00015 if self.kind == "future" else 0.0003,
            "taker_commission": 0.00035 if self.kind == "future" else 0.0003,
            "block_trade_commission": 0.00025,
            "block_trade_min_trade_amount": 200_000 if self.kind == "future" else 25,
            "block_trade_tick_size": 0.01,
            "lot_size": 1,
            "underlying_type": "crypto",
        }
        if self.kind == "future":
            row.update(
                future_type=row["instrument_type"],
                max_leverage=50 if self.perpetual else 25,
                max_liquidation_commission=0.01,
            )
        else:
            row.update(strike=self.strike, option_type=self.option_type)
        return row


def date_code(moment: datetime) -> str:
    """`5OCT26`: day without a leading zero, month, two-digit year (§12.4)."""
    return f"{moment.day}{MONTHS[moment.month - 1]}{moment.year % 100:02d}"


def strike_code(strike: float) -> str:
    """Whole strikes as digits; a decimal point is written `d` (`0d625`)."""
    text = f"{strike:.10f}".rstrip("0").rstrip(".")
    return text.replace(".", "d")


def expiries(now_ms: int) -> list[tuple[int, str]]:
    """The listed expiry dates at `now_ms`: (08:00 UTC in ms, settlement period), soonest first."""
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    day = now.replace(hour=8, minute=0, second=0, microsecond=0)
    if day <= now:
        day += timedelta(days=1)
    found: dict[datetime, str] = {}
    for offset in range(2):
        found.setdefault(day + timedelta(days=offset), "day")
    friday = day + timedelta(days=(4 - day.weekday()) % 7)
    for offset in range(2):
        found[friday + timedelta(weeks=offset)] = "week"
    quarter_ahead = next(k for k in range(2, 6) if (now.month - 1 + k) % 3 == 2)
    for months_ahead in (0, 1, quarter_ahead):
        found[_last_friday(now, months_ahead)] = "month"
    listed = sorted((when, period) for when, period in found.items() if when > now)
    return [(int(when.timestamp() * 1000), period) for when, period in listed]


def _last_friday(now: datetime, months_ahead: int) -> datetime:
    month_index = now.month - 1 + months_ahead
    year, month = now.year + month_index // 12, month_index % 12 + 1
    last = calendar.monthrange(year, month)[1]
    moment = datetime(year, month, last, 8, tzinfo=UTC)
    return moment - timedelta(days=(moment.weekday() - 4) % 7)


@dataclass
class Catalogue:
    """Every listed instrument, kept current as time passes (`refresh`)."""

    index_price: Any  # index name -> its current price (strikes are laid around it)
    live: dict[str, Instrument] = field(default_factory=dict)
    expired: dict[str, Instrument] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(200_001))

    def refresh(self, now_ms: int) -> list[Instrument]:
        """List what is due, expire what has passed; returns the instruments it expired."""
        ended = [i for i in self.live.values() if not i.perpetual and i.expiry_ms <= now_ms]
        for instrument in ended:
            self.expire(instrument.name, now_ms)
        dates = expiries(now_ms)
        for family in FAMILIES:
            self._list(family, "future", PERPETUAL_EXPIRY_MS, "perpetual", now_ms)
            if family.futures:
                for expiry, period in dates:
                    self._list(family, "future", expiry, period, now_ms)
            if family.strike_step:
                for expiry, period in dates[:OPTION_EXPIRIES]:
                    self._list_options(family, expiry, period, now_ms)
        return ended

    def expire(self, name: str, now_ms: int) -> Instrument | None:
        instrument = self.live.pop(name, None)
        if instrument is None:
            return None
        instrument.state, instrument.expired_ms = "closed", now_ms
        self.expired[name] = instrument
        while len(self.expired) > EXPIRED_KEPT:
            del self.expired[next(iter(self.expired))]
        return instrument

    def listed(self, currency: str, kind: str | None, expired: bool) -> list[dict[str, Any]]:
        source = self.expired if expired else self.live
        return [
            instrument.row()
            for instrument in source.values()
            if currency in ("any", instrument.currency)
            and (kind is None or instrument.kind == kind)
        ]

    def _name(self, family: Family, expiry_ms: int) -> str:
        base = f"{family.base}_USDC" if family.linear else family.base
        if expiry_ms >= PERPETUAL_EXPIRY_MS:
            return f"{base}-PERPETUAL"
        return f"{base}-{date_code(datetime.fromtimestamp(expiry_ms / 1000, UTC))}"

    def _list(
        self, family: Family, kind: str, expiry: int, period: str, now_ms: int, **option: Any
    ) -> None:
        name = self._name(family, expiry)
        if kind == "option":
            name += f"-{strike_code(option['strike'])}-{option['option_type'][0].upper()}"
        if name in self.live or name in self.expired:
            return
        self.live[name] = Instrument(
            name, family, kind, expiry, period, next(self._ids), now_ms, **option
        )

    def _list_options(self, family: Family, expiry: int, period: str, now_ms: int) -> None:
        step = family.strike_step
        centre = round(self.index_price(family.index) / step) * step
        strikes = [
            centre + offset * step for offset in range(-STRIKES_EACH_SIDE, STRIKES_EACH_SIDE + 1)
        ]
        # And the far wings, where a call (or put) is worth the minimum tick and never trades.
        strikes += [round(centre * factor / step) * step for factor in WINGS]
        strikes = [round(strike, 8) for strike in strikes]
        for strike in strikes:
            if strike <= 0:
                continue
            for option_type in ("call", "put"):
                self._list(
                    family, "option", expiry, period, now_ms, strike=strike, option_type=option_type
                )
