"""Catching a ticker up after an outage: its history backfilled, its live ticks held meanwhile.

An outage is a dropped socket (every ingested ticker has one) or a hole in a live feed (one
ticker). While a ticker is caught up its live ticks wait (at most `hold_timeout` seconds and
`max_held` ticks); then the backfilled ticks, the gaps for what history could not fill at live
resolution, and the held ticks are published together in timestamp order, so a hub that only
moves forward sees every one. Each outage starts at the newest tick received before it and ends
at the first live tick after it: a tick Deribit stamped before that but sent after falls inside
no gap, and one stamped after falls outside none.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from cryptomarket.deribit.errors import DeribitError, DeribitTransportError
from cryptomarket.prices.backfill import ChartSource, Filled, cover, failed, fetch_points, merge
from cryptomarket.prices.models import EPOCH, Gap, Tick, publish_stamp

logger = logging.getLogger("cryptomarket.prices.ingest")


@dataclass(eq=False)
class Catchup:
    """A ticker's backfill after a (re)connect; its live ticks wait in `held` until it is done.

    A drop during the backfill adds an outage: each starts at the newest tick received before
    it and ends at the first tick received after it (or, none yet, at the latest connect)."""

    starts: list[int]  # the newest tick received before each outage (exclusive)
    until: int  # our clock at the latest connect
    held: list[Tick] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    deadline: asyncio.TimerHandle | None = None
    # The history fetched for the backfill, kept until the last outage has its first live tick.
    history: tuple[list[Tick], str] | None = None
    down: bool = True  # dropped since the latest connect: the last outage goes on

    @property
    def since(self) -> int:
        return self.starts[0]

    def ended(self) -> bool:
        """Whether the last outage has ended on a live tick (so every window has a true end)."""
        return any(tick.timestamp > self.starts[-1] for tick in self.held)

    def windows(self) -> list[tuple[int, int]]:
        ends = []
        for start in self.starts:
            after = [tick.timestamp for tick in self.held if tick.timestamp > start]
            ends.append(min(after) if after else self.until)
        return list(zip(self.starts, ends, strict=True))


class Catchups:
    """Every ticker's catch-up under way, and how far each ticker's last one accounted for.

    `publish` gets each tick stamped and in order, `publish_gap` each gap; `spacing(ticker)` is
    the ticker's measured live spacing (ms) and `ingested(ticker)` whether it is still ingested;
    `spawn` runs a backfill as a task its owner cancels on stop.
    """

    def __init__(
        self,
        history: ChartSource,
        *,
        publish: Callable[[Tick], None],
        publish_gap: Callable[[Gap], None],
        spacing: Callable[[str], float | None],
        ingested: Callable[[str], bool],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        hold_timeout: float = 15.0,
        max_held: int = 10_000,
    ) -> None:
        self.history = history
        self.hold_timeout = hold_timeout
        self.max_held = max_held
        self._publish = publish
        self._publish_gap = publish_gap
        self._spacing = spacing
        self._ingested = ingested
        self._spawn = spawn
        self._running: dict[str, Catchup] = {}
        # Per ticker, the end of its last catch-up: filled or a gap up to there, even without a
        # live tick at that end.
        self.accounted_to: dict[str, int] = {}

    def __contains__(self, ticker: str) -> bool:
        return ticker in self._running

    @property
    def tickers(self) -> set[str]:
        """The tickers being caught up."""
        return set(self._running)

    def hold(self, ticker: str, newest: int | None) -> None:
        """The upstream is down: hold the ticker's live ticks from now until it is caught up
        (`newest`: its newest tick; a ticker never seen cannot have missed anything)."""
        if newest is None:
            return
        catchup = self._running.get(ticker)
        if catchup is None:
            self._running[ticker] = Catchup([newest], until=newest)
            return
        catchup.down = True
        if newest > catchup.starts[-1]:
            catchup.starts.append(newest)  # dropped again, after ticks of its own

    def fill_hole(self, ticker: str, known: int, tick: Tick) -> None:
        """The socket stayed up but the feed skipped from `known` to `tick`: a missed window
        like a reconnect's, caught up the same way, `tick` held until it is."""
        self._running[ticker] = Catchup([known], until=tick.timestamp)
        self.catch_up(ticker, tick.timestamp)
        self.add(ticker, tick)

    def add(self, ticker: str, tick: Tick) -> bool:
        """Hold a live tick if `ticker` is being caught up; False if it is not (publish it)."""
        catchup = self._running.get(ticker)
        if catchup is None:
            return False
        catchup.held.append(replace(tick, received_at=EPOCH))  # stamped when published
        self._arm(ticker, catchup)
        if len(catchup.held) >= self.max_held:
            self.give_up(ticker, f"{self.max_held} live ticks held")
        elif catchup.history is not None and catchup.ended():
            self._cover(ticker, catchup, *catchup.history)
        return True

    def catch_up(self, ticker: str, until: int) -> None:
        """Backfill what the outages missed, its live ticks held meanwhile. A reconnect during
        a backfill starts it again over every outage, keeping what is held."""
        catchup = self._running.get(ticker)
        if catchup is None:
            return
        self._arm(ticker, catchup)
        if catchup.task is not None:
            catchup.task.cancel()
        catchup.until = until
        catchup.down = False
        catchup.history = None  # fetched again: it must reach past this reconnect
        catchup.task = self._spawn(self._backfill(ticker, catchup))

    def give_up(self, ticker: str, why: str) -> None:
        """Stop waiting for the backfill: the window is a gap (retried by the gap job)."""
        catchup = self._running.get(ticker)
        if catchup is None:
            return
        if catchup.task is not None:
            catchup.task.cancel()
        if catchup.history is not None:  # fetched, but no live tick since: end at the connect
            self._cover(ticker, catchup, *catchup.history)
            return
        if catchup.task is not None or catchup.held:
            logger.warning(
                "%s: backfill %s; releasing %d held tick(s)", ticker, why, len(catchup.held)
            )
        self._finish(ticker, catchup, _failed(ticker, catchup, why))

    def give_up_all(self, why: str) -> None:
        for ticker in list(self._running):  # held ticks are published, not lost
            self.give_up(ticker, why)

    def forget(self, ticker: str) -> None:
        self.accounted_to.pop(ticker, None)

    def _arm(self, ticker: str, catchup: Catchup) -> None:
        """Live ticks wait at most `hold_timeout`, counted from the first one held (or the
        connect), whatever reconnects happen meanwhile."""
        if catchup.deadline is None:
            why = f"timed out after {self.hold_timeout:g} s"
            loop = asyncio.get_running_loop()
            catchup.deadline = loop.call_later(self.hold_timeout, self.give_up, ticker, why)

    async def _backfill(self, ticker: str, catchup: Catchup) -> None:
        try:
            now = int(time.time() * 1000)
            points, range_name = await fetch_points(self.history, ticker, now - catchup.since)
        except (DeribitError, DeribitTransportError) as error:
            logger.warning("%s: history unavailable for backfill: %s", ticker, error)
            result = _failed(ticker, catchup, str(error))
        except Exception as error:  # must not vanish with its task: say so, and record the gap
            logger.exception("%s: backfill after %d failed", ticker, catchup.since)
            result = _failed(ticker, catchup, type(error).__name__)
        else:
            catchup.history = points, range_name
            # An outage ends at its first live tick, not at our clock's connect: a tick Deribit
            # stamped before that but sent after must not fall inside a gap, and one stamped
            # after it must not fall outside. A ticker no longer ingested gets no such tick.
            if catchup.ended() or not self._ingested(ticker):
                self._cover(ticker, catchup, points, range_name)
            return
        self._finish(ticker, catchup, result)

    def _cover(self, ticker: str, catchup: Catchup, points: list[Tick], range_name: str) -> None:
        spacing = self._spacing(ticker)
        windows = catchup.windows()
        parts = [cover(ticker, points, *w, range_name, live_spacing_ms=spacing) for w in windows]
        self._finish(ticker, catchup, merge(parts))

    def _finish(self, ticker: str, catchup: Catchup, result: Filled) -> None:
        """Publish, in timestamp order, the backfilled ticks, the gaps and the held ticks."""
        if self._running.get(ticker) is not catchup:
            return  # given up or superseded meanwhile
        del self._running[ticker]
        ends = [end for _, end in catchup.windows()]
        if self._ingested(ticker):  # else forgotten already (released meanwhile): not again
            self.accounted_to[ticker] = max(ends, default=0) - 1  # filled or a gap up to here
        if catchup.deadline is not None:
            catchup.deadline.cancel()
        events: list[tuple[int, int, Tick | Gap]] = [
            *((tick.timestamp, 0, tick) for tick in result.ticks),
            *((gap.from_ts, 1, gap) for gap in result.gaps),
            *((tick.timestamp, 2, tick) for tick in catchup.held),
        ]
        events.sort(key=lambda event: event[:2])
        published: set[int] = set()
        for _, _, event in events:
            if isinstance(event, Gap):
                self._publish_gap(event)
            elif event.timestamp not in published:  # a held tick the history had too
                published.add(event.timestamp)
                self._publish(replace(event, received_at=publish_stamp()))
        if catchup.down:  # given up while the socket is down: the outage since the drop goes on
            self._running[ticker] = Catchup([catchup.starts[-1]], until=catchup.starts[-1])
        if result.ticks or result.gaps:
            logger.info(
                "%s: backfilled %d tick(s), %d gap(s), %d coarse point(s) not used%s",
                ticker,
                len(result.ticks),
                len(result.gaps),
                result.coarse,
                f"; then {len(catchup.held)} held" if catchup.held else "",
            )


def _failed(ticker: str, catchup: Catchup, why: str) -> Filled:
    return merge([failed(ticker, *window, why) for window in catchup.windows()])
