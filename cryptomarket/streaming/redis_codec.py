"""How market events travel through Redis: the keys, and one encoding for pub/sub and the stream.

A tick travels as a one-line JSON header followed by its SSE frame, encoded once by the publisher:
replicas pass those very bytes on to their clients. The header carries the tick's publish-order
stamp (`received_at`) as integer microseconds since the epoch, `received_us`. An instrument's
fields travel once, in the frame (its `data` holds them beside ticker, price and timestamp): the
header only says `"instrument": true`, which halves what its updates cost in the Redis stream.
"""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptomarket.prices.models import Gap, Tick
from cryptomarket.streaming import events
from cryptomarket.streaming.bus import Event, UpstreamStatus

EVENTS_CHANNEL = "cryptomarket:events"
TICKS_STREAM = "cryptomarket:ticks"
LATEST_PREFIX = "cryptomarket:latest:"
UPSTREAM_STATUS_KEY = "cryptomarket:upstream-status"

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def latest_key(ticker: str) -> str:
    return LATEST_PREFIX + ticker


def to_us(moment: datetime) -> int:
    """Integer microseconds since the epoch, exactly (no float on the way)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MICROSECOND


def from_us(us: int) -> datetime:
    return EPOCH + us * MICROSECOND


def pack(event: Event) -> bytes:
    """Header line + SSE frame for a tick; the header alone for other events."""
    if isinstance(event, Tick):
        header: dict[str, Any] = {
            "kind": "tick",
            "ticker": event.ticker,
            "price": event.price,
            "timestamp": event.timestamp,
            "received_us": to_us(event.received_at),
        }
        if event.fields is not None:
            header["instrument"] = True  # its fields are read back from the frame
        return json.dumps(header).encode() + b"\n" + events.price_frame(event)
    if isinstance(event, Gap):
        header = {
            "kind": "gap",
            "ticker": event.ticker,
            "from": event.from_ts,
            "to": event.to_ts,
            "reason": event.reason,
        }
    else:
        header = {"kind": "status", "state": event.state, "at": event.at.isoformat()}
    return json.dumps(header).encode()


TICK_KEYS = frozenset({"ticker", "price", "timestamp", "datetime"})


def fields_of_frame(frame: bytes) -> dict[str, Any] | None:
    """An instrument's fields from its SSE price frame (streaming/events.py writes them)."""
    start = frame.find(b"\ndata: ")
    if start < 0:
        return None
    end = frame.find(b"\n", start + 7)
    try:
        data = json.loads(frame[start + 7 : end if end >= 0 else None])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {key: value for key, value in data.items() if key not in TICK_KEYS}


def unpack(message: bytes) -> tuple[Event, bytes | None]:
    """The event, and for a tick the SSE frame its publisher encoded."""
    head, _, frame = message.partition(b"\n")
    header: dict[str, Any] = json.loads(head)
    kind = header["kind"]
    if kind == "tick":
        received_us = header.get("received_us")
        received_at = datetime.now(UTC) if received_us is None else from_us(int(received_us))
        fields = header.get("fields")  # written so before the fields moved to the frame
        if header.get("instrument") and frame:
            fields = fields_of_frame(frame)
        tick = Tick(
            header["ticker"],
            float(header["price"]),
            int(header["timestamp"]),
            received_at,
            fields if isinstance(fields, dict) else None,
        )
        return tick, frame or None
    if kind == "gap":
        gap = Gap(header["ticker"], int(header["from"]), int(header["to"]), header["reason"])
        return gap, None
    return UpstreamStatus(header["state"], datetime.fromisoformat(header["at"])), None


def read_message(data: object) -> tuple[Event, bytes | None] | None:
    """What a stream entry's field, a key or a pub/sub message holds, as `unpack` reads it; None
    when it holds no message, or one that cannot be read (another version's, or damaged)."""
    if not isinstance(data, bytes):
        return None
    try:
        return unpack(data)
    except (ValueError, KeyError, TypeError):
        return None
