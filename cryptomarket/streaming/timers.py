"""When each timer subscription of the process is due: one heap of due times for every stream,
never a loop per client.

An entry (due, order, stream, ticker, schedule id) is live while the stream's schedule of the
ticker is still that id (Stream.schedules): closing a stream, re-timing or cancelling a
subscription leaves its entry behind, skipped when it comes due. Such entries of a day-long timer
would wait a day: once they outnumber the live ones the heap is rebuilt without them.
"""

import asyncio
import heapq
import itertools
from collections.abc import Callable

from cryptomarket.streaming.stream import Stream

Entry = tuple[float, int, Stream, str, int]


class TimerSchedule:
    def __init__(self) -> None:
        self._due: list[Entry] = []
        self._order = itertools.count()
        self._live = 0  # entries known live at the last compaction, plus those added since
        self.changed = asyncio.Event()  # set when the next due time moved earlier

    def __len__(self) -> int:
        """Entries held, live or stale."""
        return len(self._due)

    def entries(self) -> list[Entry]:
        return list(self._due)

    @property
    def next_due(self) -> float | None:
        return self._due[0][0] if self._due else None

    def start(self, stream: Stream, ticker: str, timer: int, now: float) -> None:
        """The stream's subscription of the ticker is due every `timer` seconds from `now`."""
        self._live += 1
        schedule = stream.schedules[ticker] = next(self._order)
        self._push(now + timer, stream, ticker, schedule)
        self._compact_if_stale()

    def stop(self, stream: Stream, ticker: str) -> None:
        """Its entry, if any, turns stale."""
        if stream.schedules.pop(ticker, None) is not None:
            self._live -= 1

    def forget_closed(self) -> None:
        """A stream closed: its entries are stale now (Stream.forget cleared its schedules)."""
        self._compact_if_stale()

    def fire_due(self, now: float, fire: Callable[[Stream, str], None]) -> None:
        """`fire` each live entry due by `now`; each stays due every timer after, skipping the
        firings missed (a busy loop) rather than sending them in a burst."""
        while self._due and self._due[0][0] <= now:
            due, _, stream, ticker, schedule = heapq.heappop(self._due)
            if stream.closed or stream.schedules.get(ticker) != schedule:
                continue  # closed, unsubscribed, re-timed or subscribed anew: stale
            fire(stream, ticker)
            timer = stream.timers.get(ticker)
            if stream.closed or timer is None:
                continue  # the firing dropped it (too slow a reader): nothing left to schedule
            following = due + timer
            self._push(following if following > now else now + timer, stream, ticker, schedule)

    def _push(self, due: float, stream: Stream, ticker: str, schedule: int) -> None:
        first = not self._due or due < self._due[0][0]
        heapq.heappush(self._due, (due, next(self._order), stream, ticker, schedule))
        if first:
            self.changed.set()

    def _compact_if_stale(self) -> None:
        if len(self._due) <= 2 * self._live + 64:
            return
        self._due = [
            entry
            for entry in self._due
            if not entry[2].closed and entry[2].schedules.get(entry[3]) == entry[4]
        ]
        heapq.heapify(self._due)
        self._live = len(self._due)
        self.changed.set()
