"""The instruments' side of the simulated market: the catalogue, a book per instrument and what
each `ticker.{instrument}.{interval}` channel sends.

An instrument updates once per `interval` seconds on average (jittered like the indexes' ticks)
from the first time anyone asks for it (a subscription or `public/ticker`) on, whether or not it
is still watched, so `sim/produced` knows every frame its `100ms` channel sent while a client was
away. `raw` carries every update, `100ms` at most one per 100 ms window, `agg2` one per second
(the rate observed on the real feed, reference §13.1).
"""

import random
from dataclasses import dataclass, field
from typing import Any

from cryptomarket.deribit.simulator.instruments import EXPIRED_KEPT, Catalogue, Instrument
from cryptomarket.deribit.simulator.record import TickRecord
from cryptomarket.deribit.simulator.tickers import Book, expiry_frames, new_book, update

# What `public/ticker` may answer of an expired instrument (unverified on Deribit, reference
# 13.4): its final frame, the frame before it, 13020 not_found, or -32602 as for an unknown name.
EXPIRED_ANSWERS = ("final", "before_final", "not_found", "unknown")

WINDOWS_MS = {"raw": 0, "100ms": 100, "agg2": 1000}
RECORDED = "100ms"  # the channel the gateway uses: its frames are `sim/produced`'s truth
REFRESH_MS = 1000  # how often the listing is brought up to date


def channel(name: str, interval: str) -> str:
    return f"ticker.{name}.{interval}"


def parse_channel(value: str) -> tuple[str, str] | None:
    """`ticker.BTC-PERPETUAL.100ms` -> (name, interval)."""
    if not value.startswith("ticker."):
        return None
    name, _, interval = value.removeprefix("ticker.").rpartition(".")
    return (name, interval) if name and interval in WINDOWS_MS else None


@dataclass
class _Active:
    instrument: Instrument
    book: Book
    record: TickRecord
    due_ms: float
    latest: dict[str, Any] | None = None
    sent_window: dict[str, int] = field(default_factory=dict)  # interval -> last window sent
    expiring: bool = False
    # What `public/ticker` answers of it once expired (unverified on Deribit: reference 13.4).
    answer: str = "final"
    before_final: dict[str, Any] | None = None  # its frame before the final one


class InstrumentMarket:
    def __init__(
        self, seed: int, index_price: Any, *, interval: float, keep_ms: int, now_ms: int
    ) -> None:
        self.seed = seed
        self.index_price = index_price  # index name -> current price
        self.interval_ms = interval * 1000
        self.keep_ms = keep_ms
        self.catalogue = Catalogue(index_price)
        self.catalogue.refresh(now_ms)
        self._refreshed_ms = now_ms
        self._active: dict[str, _Active] = {}
        self._expired: dict[str, _Active] = {}  # their final ticker and record, a while
        self._timing = random.Random(f"{seed}:instruments:timing")

    def live(self, name: str) -> Instrument | None:
        return self.catalogue.live.get(name)

    def activate(self, name: str, now_ms: int) -> bool:
        """Start updating a listed instrument (idempotent); False when it is not listed."""
        if name in self._active:
            return not self._active[name].expiring
        instrument = self.catalogue.live.get(name)
        if instrument is None:
            return False
        active = _Active(
            instrument, new_book(self.seed, instrument), TickRecord(self.keep_ms), now_ms
        )
        self._active[name] = active
        # A ticker from the first moment on; sent from the next update, once subscribed.
        active.latest = update(active.book, instrument, self._index(instrument), now_ms)
        active.due_ms = self._next_due(now_ms)
        return True

    def ticker(self, name: str, now_ms: int) -> dict[str, Any] | None:
        """`public/ticker`: the latest update (an expired instrument's final one, or the one
        before it when so asked)."""
        if name in self._expired:
            expired = self._expired[name]
            return expired.before_final if expired.answer == "before_final" else expired.latest
        if name not in self._active and not self.activate(name, now_ms):
            return None
        return self._active[name].latest

    def expire(self, name: str, now_ms: int, answer: str = "final") -> bool:
        """`sim/expire_instrument`: expire a listed instrument now; `answer` is what
        `public/ticker` says of it after (EXPIRED_ANSWERS)."""
        if self.catalogue.live.get(name) is None:
            return False
        self.activate(name, now_ms)
        self.catalogue.expire(name, now_ms)
        self._active[name].expiring = True
        self._active[name].answer = answer
        return True

    def expired_answer(self, name: str) -> str | None:
        """What `public/ticker` answers of an expired instrument kept here; None: not one."""
        expired = self._expired.get(name)
        return None if expired is None else expired.answer

    def produced(
        self, name: str, since: int | None, until: int | None
    ) -> tuple[list[list[float]], bool] | None:
        active = self._active.get(name) or self._expired.get(name)
        if active is None:
            return None
        return active.record.between(since, until), active.record.complete(since)

    def step(self, now_ms: int) -> list[tuple[str, dict[str, Any]]]:
        """Everything due by `now_ms`: (channel, data) to send, in order."""
        if now_ms - self._refreshed_ms >= REFRESH_MS:
            self._refreshed_ms = now_ms
            for instrument in self.catalogue.refresh(now_ms):
                if instrument.name in self._active:
                    self._active[instrument.name].expiring = True
        out: list[tuple[str, dict[str, Any]]] = []
        for name, active in list(self._active.items()):
            if active.expiring:
                out.extend(self._expire_frames(active))
                del self._active[name]
                self._expired[name] = active
                while len(self._expired) > EXPIRED_KEPT:
                    del self._expired[next(iter(self._expired))]
            elif active.due_ms <= now_ms:
                out.extend(self._step(active, now_ms))
        return out

    def _step(self, active: _Active, now_ms: int) -> list[tuple[str, dict[str, Any]]]:
        data = update(active.book, active.instrument, self._index(active.instrument), now_ms)
        active.latest = data
        active.due_ms = self._next_due(now_ms)
        return self._send(active, data, every_window=False)

    def _index(self, instrument: Instrument) -> float:
        return float(self.index_price(instrument.family.index))

    def _next_due(self, now_ms: float) -> float:
        return now_ms + self.interval_ms * (0.5 + self._timing.random())

    def _expire_frames(self, active: _Active) -> list[tuple[str, dict[str, Any]]]:
        index = self._index(active.instrument)
        base = active.latest or update(active.book, active.instrument, index, active.book.last_ts)
        out = []
        for data in expiry_frames(base, active.instrument, index):
            active.before_final, active.latest = active.latest, data
            out.extend(self._send(active, data, every_window=True))
        return out

    def _send(
        self, active: _Active, data: dict[str, Any], *, every_window: bool
    ) -> list[tuple[str, dict[str, Any]]]:
        out = []
        timestamp = int(data["timestamp"])
        for interval, window_ms in WINDOWS_MS.items():
            window = timestamp // window_ms if window_ms else timestamp
            if every_window or active.sent_window.get(interval) != window:
                active.sent_window[interval] = window
                out.append((channel(active.instrument.name, interval), data))
                if interval == RECORDED:
                    active.record.append(timestamp, float(data["mark_price"]))
        return out
