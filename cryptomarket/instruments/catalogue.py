"""The active Deribit instruments, fetched with `public/get_instruments` and cached.

One call with `currency=any` lists every instrument (a few MB on the real exchange, parsed in a
worker thread). The list is refreshed when it is older than `ttl`, as soon as the earliest
expiry in it has passed (so an expired instrument stops being accepted), and when asked for a
name it lacks (a new listing), at most once per `retry_after` seconds; a stale list beats none.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cryptomarket.deribit.errors import DeribitError, DeribitTransportError
from cryptomarket.prices.tickers import CatalogueUnavailable

logger = logging.getLogger("cryptomarket.instruments")

PERPETUAL_FROM_MS = 32_503_680_000_000  # 3000-01-01: Deribit's "never expires" sentinels
CURRENCIES = ("BTC", "ETH", "USDC", "USDT", "EURR")
KINDS = ("future", "option", "spot", "future_combo", "option_combo")


@dataclass(frozen=True, slots=True)
class Instrument:
    name: str
    kind: str  # Deribit's: future (perpetuals too), option, spot, future_combo, option_combo
    settlement_period: str | None
    expiration_timestamp: int | None
    base_currency: str | None
    quote_currency: str | None
    settlement_currency: str | None
    price_index: str | None
    instrument_type: str | None  # linear or reversed
    strike: float | None
    option_type: str | None
    tick_size: float | None
    contract_size: float | None
    min_trade_amount: float | None

    @property
    def perpetual(self) -> bool:
        return self.settlement_period == "perpetual"

    @property
    def expires(self) -> bool:
        return self.expiration_timestamp is not None and (
            self.expiration_timestamp < PERPETUAL_FROM_MS
        )

    @property
    def family(self) -> str:
        """perpetual, future, option, spot or combo: what its ticker frames carry (§13.2)."""
        if self.kind == "future":
            return "perpetual" if self.perpetual else "future"
        return "combo" if self.kind.endswith("combo") else self.kind

    def currencies(self) -> set[str]:
        """What `currency=` finds it under (Deribit answers by settlement currency; base and
        quote are accepted too, since the docs do not say)."""
        found = {self.settlement_currency, self.base_currency, self.quote_currency}
        return {currency for currency in found if currency}


def _number(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_instruments(result: Any) -> dict[str, Instrument]:
    """Active instruments by name; rows without a name or kind, or not active, are skipped and
    unknown keys ignored (Deribit adds fields over time)."""
    found: dict[str, Instrument] = {}
    for row in result if isinstance(result, list) else []:
        if not isinstance(row, dict):
            continue
        name, kind = _text(row.get("instrument_name")), _text(row.get("kind"))
        if name is None or kind is None or row.get("is_active") is False:
            continue
        expiry = row.get("expiration_timestamp")
        found[name] = Instrument(
            name=name,
            kind=kind,
            settlement_period=_text(row.get("settlement_period")),
            expiration_timestamp=expiry if isinstance(expiry, int) else None,
            base_currency=_text(row.get("base_currency")),
            quote_currency=_text(row.get("quote_currency")),
            settlement_currency=_text(row.get("settlement_currency")),
            price_index=_text(row.get("price_index")),
            instrument_type=_text(row.get("instrument_type")),
            strike=_number(row.get("strike")),
            option_type=_text(row.get("option_type")),
            tick_size=_number(row.get("tick_size")),
            contract_size=_number(row.get("contract_size")),
            min_trade_amount=_number(row.get("min_trade_amount")),
        )
    return found


class InstrumentCatalogue:
    def __init__(
        self,
        call: Callable[..., Awaitable[Any]],
        *,
        ttl: float = 600.0,
        retry_after: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._call = call
        self.ttl = ttl
        self.retry_after = retry_after
        self._clock = clock
        self._by_name: dict[str, Instrument] = {}
        self._fetched_at = 0.0
        self._next_expiry = float("inf")  # seconds, the earliest expiry in the list
        self._tried_at = -float("inf")
        self._lock = asyncio.Lock()
        self._seen_expire: set[str] = set()  # expired on the wire, still in the list fetched

    async def all(self) -> list[Instrument]:
        await self._ensure(missing=None)
        return sorted(
            (i for i in self._by_name.values() if not self.expired(i)), key=lambda i: i.name
        )

    def mark_expired(self, name: str) -> None:
        """The instrument's final frame was seen: refuse it from now on, whatever the list says
        (Deribit may expire it before its listed time, or list it a while after)."""
        if name in self._by_name:
            self._seen_expire.add(name)

    async def get(self, name: str) -> Instrument | None:
        """The active instrument called `name`, or None."""
        await self._ensure(missing=name)
        instrument = self._by_name.get(name)
        if instrument is not None and self.expired(instrument):
            return None  # expired since the list was fetched
        return instrument

    def expired(self, instrument: Instrument) -> bool:
        if instrument.name in self._seen_expire:
            return True
        expiry = instrument.expiration_timestamp
        return instrument.expires and expiry is not None and expiry <= self._clock() * 1000

    def cached(self, name: str) -> Instrument | None:
        """What the list says of `name` without asking Deribit (None when not listed)."""
        return self._by_name.get(name)

    async def _ensure(self, *, missing: str | None) -> None:
        if self._fresh() and (missing is None or missing in self._by_name):
            return
        async with self._lock:
            stale = not self._fresh() or (missing is not None and missing not in self._by_name)
            if stale and time.monotonic() - self._tried_at > self.retry_after:
                await self._refresh()
        if not self._by_name:
            raise CatalogueUnavailable("Deribit's list of instruments could not be fetched")

    def _fresh(self) -> bool:
        now = self._clock()
        return bool(self._by_name) and now - self._fetched_at < self.ttl and now < self._next_expiry

    async def _refresh(self) -> None:
        self._tried_at = time.monotonic()
        try:
            result = await self._call("public/get_instruments", {"currency": "any"})
        except (DeribitError, DeribitTransportError) as error:
            logger.warning("instruments unavailable: %s", error)
            return
        found = await asyncio.to_thread(parse_instruments, result)
        if not found:
            return
        self._by_name = found
        self._seen_expire &= set(found)  # bounded by the list
        self._fetched_at = self._clock()
        now_ms = self._fetched_at * 1000
        expiries = [
            expiry
            for i in found.values()
            if i.expires and (expiry := i.expiration_timestamp or 0) > now_ms
        ]
        self._next_expiry = min(expiries) / 1000 if expiries else float("inf")
        logger.info("%d active instruments listed", len(found))
