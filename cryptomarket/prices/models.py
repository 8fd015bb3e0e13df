"""What flows through ingest: ticks from Deribit and the gaps where ticks are missing.

A tick is one update of a ticker of either kind (prices/kinds.py): an index price, or an
instrument's ticker, whose `price` is its mark price and whose other fields ride in `fields`.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_last_stamp_us = 0


@dataclass(frozen=True, slots=True)
class Tick:
    ticker: str
    price: float
    timestamp: int  # Deribit's, ms since the epoch
    # When the ingest handed it to the bus: the publish-order stamp (see `publish_stamp`).
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC), compare=False)
    # An instrument's ticker fields (instruments/frames.py); None for an index price.
    fields: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def moment(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp / 1000, UTC)


@dataclass(frozen=True, slots=True)
class Gap:
    """Ticks of `ticker` between `from_ts` and `to_ts` (ms, inclusive) are missing for good."""

    ticker: str
    from_ts: int
    to_ts: int
    reason: str


def publish_stamp() -> datetime:
    """Now, but at least 1 µs later than the stamp before it in this process, so ticks stamped
    at publish are ordered by their stamps even when the clock stalls or steps back."""
    global _last_stamp_us  # noqa: PLW0603  # one order per process, whatever publishes
    _last_stamp_us = max(time.time_ns() // 1000, _last_stamp_us + 1)
    return EPOCH + timedelta(microseconds=_last_stamp_us)
