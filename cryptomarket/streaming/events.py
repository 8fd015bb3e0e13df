"""Server-Sent Events framing (the WHATWG event-stream format), encoded once per event.

A frame is `event:`, optional `id:`, one `data:` line of JSON, and a blank line. JSON never holds a
raw newline, so one data line is always enough; ids and event names are our own ASCII.
"""

import json
import re
from datetime import UTC, datetime
from typing import Any

from cryptomarket.prices.models import Gap, Tick

PING = b": ping\n\n"
RETRY_MS = 3000


def frame(event: str, data: Any, event_id: str | None = None) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return f"{head}data: {payload}\n\n".encode()


def retry(ms: int = RETRY_MS) -> bytes:
    """Tells EventSource how long to wait before reconnecting."""
    return f"retry: {ms}\n\n".encode()


def iso(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_id(tick: Tick) -> str:
    return f"{tick.ticker}:{tick.timestamp}"


def price_frame(tick: Tick) -> bytes:
    """A price: an index's, or an instrument's mark with the fields of its kind beside it."""
    data: dict[str, Any] = {
        "ticker": tick.ticker,
        "price": tick.price,
        "timestamp": tick.timestamp,
        "datetime": iso(tick.timestamp),
    }
    if tick.fields is not None:
        data.update(tick.fields)
    return frame("price", data, event_id(tick))


def expired_frame(tick: Tick) -> bytes:
    """An instrument expired (its final frame was `tick`): the subscription ends."""
    fields = tick.fields or {}
    data = {
        "ticker": tick.ticker,
        "timestamp": tick.timestamp,
        "datetime": iso(tick.timestamp),
        "state": fields.get("state"),
        "delivery_price": fields.get("delivery_price"),
    }
    return frame("expired", data)


def gap_frame(gap: Gap) -> bytes:
    return frame("gap", {"ticker": gap.ticker, "from": gap.from_ts, "to": gap.to_ts})


def session_ended_frame(reason: str) -> bytes:
    """The stream's session expired or was signed out (or its key changed): the stream ends."""
    return frame("session_ended", {"reason": reason})


def status_frame(upstream: str, at: datetime) -> bytes:
    return frame("status", {"upstream": upstream, "at": at.isoformat().replace("+00:00", "Z")})


def parse_last_event_id(value: str | None) -> tuple[str, int] | None:
    """`ticker:timestamp`, as our price events carry; anything else is ignored."""
    if not value or len(value) > 100:
        return None
    ticker, _, timestamp = value.strip().rpartition(":")
    if not ticker or not re.fullmatch(r"[0-9]{1,18}", timestamp):
        return None
    return ticker, int(timestamp)
