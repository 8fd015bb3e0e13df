"""The two kinds of ticker and what differs between them, in one place each: the upstream channel,
how its frames become ticks, and the table their ticks are stored in. Everything else (ingest,
writer, backfill, gaps, hub, history) is shared and asks `kind_of`.

- index prices (`btc_usd`): `deribit_price_index.{name}`, `{index_name, price, timestamp}`;
- instruments (`BTC-PERPETUAL`): `ticker.{name}.100ms`, the ticker of its kind
  (instruments/frames.py).
"""

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table

from cryptomarket.core.tables import Tables
from cryptomarket.instruments.frames import parse_ticker
from cryptomarket.instruments.names import is_instrument
from cryptomarket.prices.models import Tick

INDEX_PREFIX = "deribit_price_index."
INSTRUMENT_PREFIX = "ticker."
INSTRUMENT_INTERVAL = "100ms"


@dataclass(frozen=True)
class Kind:
    name: str  # "index" or "instrument"

    def channel(self, ticker: str) -> str:
        if self.name == "index":
            return INDEX_PREFIX + ticker
        return f"{INSTRUMENT_PREFIX}{ticker}.{INSTRUMENT_INTERVAL}"

    def table(self, tables: Tables) -> Table:
        return tables.price_tickers if self.name == "index" else tables.instrument_ticks


INDEX = Kind("index")
INSTRUMENT = Kind("instrument")


def kind_of(ticker: str) -> Kind:
    return INSTRUMENT if is_instrument(ticker) else INDEX


def channel_of(ticker: str) -> str:
    return kind_of(ticker).channel(ticker)


def ticker_of(channel: str) -> str | None:
    """The ticker an upstream channel of ours carries, else None."""
    if channel.startswith(INDEX_PREFIX):
        return channel.removeprefix(INDEX_PREFIX) or None
    suffix = "." + INSTRUMENT_INTERVAL
    if channel.startswith(INSTRUMENT_PREFIX) and channel.endswith(suffix):
        return channel[len(INSTRUMENT_PREFIX) : -len(suffix)] or None
    return None


class MalformedFrame(ValueError):
    pass


def parse_frame(ticker: str, data: Any) -> Tick:
    """A notification's `data` as a tick (received now); MalformedFrame when unusable."""
    if not isinstance(data, dict):
        raise MalformedFrame("not an object")
    if is_instrument(ticker):
        tick = parse_ticker(ticker, data)
        if tick is None:
            raise MalformedFrame("no timestamp or mark price")
        return tick
    try:
        price, timestamp = float(data["price"]), int(data["timestamp"])
    except (KeyError, TypeError, ValueError):
        raise MalformedFrame("no price or timestamp") from None
    if not math.isfinite(price) or timestamp <= 0:
        raise MalformedFrame("an impossible price or timestamp")
    return Tick(ticker, price, timestamp)
