"""What flows through ingest: ticks from Deribit and the gaps where ticks are missing."""

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

CHANNEL_PREFIX = "deribit_price_index."
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_last_stamp_us = 0


def channel_of(ticker: str) -> str:
    return CHANNEL_PREFIX + ticker


@dataclass(frozen=True, slots=True)
class Tick:
    ticker: str
    price: float
    timestamp: int  # Deribit's, ms since the epoch
    # When the ingest handed it to the bus: the publish-order stamp (see `publish_stamp`).
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC), compare=False)

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
