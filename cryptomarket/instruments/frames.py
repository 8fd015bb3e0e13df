"""An instrument's ticker frame (reference §13.2) as a tick: the mark price is its price, the
fields its kind carries are kept (checked, bounded), unknown keys are dropped.

Deribit's frames differ by kind and over time (`stats` missing on some perpetual frames, an empty
book side as `null` or `0.0`, `estimated_delivery_price` the string "expired" after expiry), so
every field is optional and only its type is checked.
"""

import math
from datetime import datetime
from typing import Any

from cryptomarket.prices.models import Tick

NUMBERS = (
    "mark_price",
    "index_price",
    "last_price",
    "best_bid_price",
    "best_ask_price",
    "best_bid_amount",
    "best_ask_amount",
    "open_interest",
    "min_price",
    "max_price",
    "settlement_price",
    "delivery_price",
    "current_funding",
    "funding_8h",
    "interest_value",
    "underlying_price",
    "interest_rate",
    "bid_iv",
    "ask_iv",
    "mark_iv",
    "implied_bid",
    "implied_ask",
)
TEXTS = ("state", "underlying_index", "combo_state")
NUMBER_OR_TEXT = ("estimated_delivery_price",)  # a number, or "expired"
GROUPS = {
    "stats": ("volume", "volume_usd", "volume_notional", "price_change", "high", "low"),
    "greeks": ("delta", "gamma", "vega", "theta", "rho"),
}
MAX_TEXT = 64
# The states after which an instrument sends nothing more (reference §13.4).
FINAL_STATES = frozenset({"closed", "delivered", "archivized"})


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def parse_ticker(instrument: str, data: dict[str, Any]) -> Tick | None:
    """The tick of one ticker frame, or None when it has no usable timestamp or mark price."""
    timestamp, mark = data.get("timestamp"), _number(data.get("mark_price"))
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp <= 0:
        return None
    if mark is None:
        return None
    fields: dict[str, Any] = {}
    for name in NUMBERS:
        if name in data:
            fields[name] = _number(data[name])
    for name in TEXTS:
        if name in data:
            fields[name] = _text(data[name])
    for name in NUMBER_OR_TEXT:
        if name in data:
            value = data[name]
            fields[name] = _text(value) if isinstance(value, str) else _number(value)
    for group, keys in GROUPS.items():
        values = data.get(group)
        if isinstance(values, dict):
            fields[group] = {key: _number(values[key]) for key in keys if key in values}
    return Tick(instrument, mark, timestamp, fields=fields)


def expiry_notice(instrument: str, timestamp: int, stamp: datetime) -> Tick:
    """The ingest's word that an instrument is gone though Deribit sent no final frame: final
    (it ends the streams and subscriptions) but no update of Deribit's (no mark), never stored."""
    return Tick(instrument, 0.0, timestamp, stamp, {"state": "closed"})


def is_notice(tick: Tick) -> bool:
    return tick.fields is not None and "mark_price" not in tick.fields


def is_final(tick: Tick) -> bool:
    """The instrument's last frame: it expired (delivered) and its channel falls silent."""
    fields = tick.fields or {}
    return fields.get("state") in FINAL_STATES or fields.get("delivery_price") is not None


def event_data(tick: Tick, moment: str) -> dict[str, Any]:
    """The stream's (and the history's) view of an instrument tick."""
    return {
        "ticker": tick.ticker,
        "price": tick.price,
        "timestamp": tick.timestamp,
        "datetime": moment,
        **(tick.fields or {}),
    }
