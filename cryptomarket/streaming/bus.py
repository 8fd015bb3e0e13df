"""The market-event bus: ingest publishes, the streams listen.

Embedded mode uses this in-process bus; distributed mode puts Redis pub/sub behind the same
interface. Listeners are called synchronously and must only hand the event on (no I/O).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptomarket.prices.models import Gap, Tick

logger = logging.getLogger("cryptomarket.streaming.bus")


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    """The upstream connection changed state: connected, reconnecting or stale."""

    state: str
    at: datetime


Event = Tick | Gap | UpstreamStatus
Listener = Callable[[Event], None]


def upstream_status(state: str) -> UpstreamStatus:
    return UpstreamStatus(state, datetime.now(UTC))


class LocalBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Receive every event from now on; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, event: Event) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("a bus listener failed")
