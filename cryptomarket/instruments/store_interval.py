"""What of an instrument's updates is stored: the first of every INSTRUMENT_STORE_INTERVAL_MS,
by Deribit's timestamp (windows aligned to the epoch), so the choice is the same in whatever
batches the ticks come and whichever process stores them; and an instrument's final frame (its
delivery price). Index prices are always stored.

Ticks of a ticker come in timestamp order (ingest publishes them so), so the newest stored window
per instrument is all there is to remember. A choice must not be spent before its write succeeds:
a persist run whose write failed leaves its batch to the next run, which must choose the same
updates again; so a batch is chosen inside `choosing()`, which undoes its choices when its write
fails. A window that ended
FORGET_AFTER_MS before the newest update seen is forgotten: its instrument's next update lies in
a later window anyway, and without that the dict would keep every instrument ever stored.
"""

import contextlib
from collections.abc import Iterator

from cryptomarket.instruments.frames import is_final, is_notice
from cryptomarket.instruments.names import is_instrument
from cryptomarket.prices.models import Tick

FORGET_AFTER_MS = 10 * 60 * 1000


class StoreInterval:
    def __init__(self, interval_ms: int) -> None:
        self.interval_ms = interval_ms
        self._window: dict[str, int] = {}  # instrument -> the window of its last kept tick
        self._swept_at = 0  # the newest timestamp seen at the last sweep

    def keep(self, tick: Tick) -> bool:
        if not is_instrument(tick.ticker):
            return True
        if is_notice(tick):
            return False  # the ingest's word that an instrument is gone, not an update
        if self.interval_ms <= 0:
            return True
        if tick.timestamp - self._swept_at >= FORGET_AFTER_MS:
            self._sweep(tick.timestamp)
        window = tick.timestamp // self.interval_ms
        if is_final(tick):
            self._window.pop(tick.ticker, None)  # nothing more comes of it
            return True
        if self._window.get(tick.ticker, -1) >= window:
            return False
        self._window[tick.ticker] = window
        return True

    @contextlib.contextmanager
    def choosing(self) -> Iterator[None]:
        """Choices made in the block are undone if it fails: the write they were made for did
        not happen, and the same ticks read again must be chosen again, every window of them."""
        window, swept_at = dict(self._window), self._swept_at
        try:
            yield
        except BaseException:
            self._window, self._swept_at = window, swept_at
            raise

    def __len__(self) -> int:
        return len(self._window)

    def _sweep(self, newest: int) -> None:
        before = (newest - FORGET_AFTER_MS) // self.interval_ms
        self._window = {name: window for name, window in self._window.items() if window >= before}
        self._swept_at = newest
