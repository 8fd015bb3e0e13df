"""What flows through ingest: ticks from Deribit and the gaps where ticks are missing."""

from dataclasses import dataclass, field
from datetime import UTC, datetime

CHANNEL_PREFIX = "deribit_price_index."


def channel_of(ticker: str) -> str:
    return CHANNEL_PREFIX + ticker


@dataclass(frozen=True, slots=True)
class Tick:
    ticker: str
    price: float
    timestamp: int  # Deribit's, ms since the epoch
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
