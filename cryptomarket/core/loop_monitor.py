"""Event-loop stalls, measured inside the process.

A timer is set `interval` seconds ahead, again and again; how late it fires is how long the loop
was busy with something else. Lateness over `threshold` is a stall: logged as one warning line
(the soak benchmark counts them) and kept in `stalls` / `worst` for anyone holding the monitor.

A stall is work that runs long, so the timer runs at `interval` while there is work: `poke` (each
market event, each request) sets it going, and it goes on while pokes keep coming. Without them
it fires every `idle_interval` only: waking an idle process is what costs (about 0.13 ms of CPU
a wake on this project's 2-core VM), and twenty wakes a second for nothing were a third of an
idle server's CPU. A plain timer callback, not a task sleeping, for the same reason.
"""

import asyncio
import gc
import logging
import time
from typing import Any

logger = logging.getLogger("cryptomarket.loop")


class LoopMonitor:
    def __init__(
        self, *, interval: float = 0.05, threshold: float = 0.1, idle_interval: float = 1.0
    ) -> None:
        self.interval = interval
        self.idle_interval = idle_interval
        self.threshold = threshold
        self.stalls = 0
        self.worst = 0.0  # seconds, the longest lateness seen
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._idle = False  # the timer runs at idle_interval
        self._poked = False  # work came since the timer was set
        # Seconds the garbage collector ran, since start: a stall line says how much of it was
        # collection (a full one walks every tracked object) and how much was our own work.
        self.collecting = 0.0
        self._collection_started = 0.0
        self._collected_before = 0.0

    def start(self) -> None:
        if self._timer is None:
            gc.callbacks.append(self._on_collection)
            self._loop = asyncio.get_running_loop()
            self._arm(self._loop, self.interval)

    @property
    def next_check(self) -> float | None:
        """Loop time the timer fires at next (None: stopped)."""
        return self._due if self._timer is not None else None

    def poke(self, *_: object) -> None:
        """Work is starting: watch the loop at `interval` while it lasts."""
        if not self._idle:
            self._poked = True
        elif self._timer is not None and self._loop is not None:
            self._timer.cancel()
            self._arm(self._loop, self.interval)

    async def stop(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _arm(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._idle = interval > self.interval
        self._poked = False
        self._due = loop.time() + interval
        self._collected_before = self.collecting
        self._timer = loop.call_at(self._due, self._fired, loop)

    def _fired(self, loop: asyncio.AbstractEventLoop) -> None:
        late = loop.time() - self._due
        self.worst = max(self.worst, late)
        if late > self.threshold:
            self.stalls += 1
            logger.warning(
                "event loop stalled for %.0f ms (garbage collection %.0f ms of it)",
                late * 1000,
                min(late, self.collecting - self._collected_before) * 1000,
            )
        self._arm(loop, self.interval if self._poked else max(self.idle_interval, self.interval))

    def _on_collection(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._collection_started = time.perf_counter()
        else:
            self.collecting += time.perf_counter() - self._collection_started
