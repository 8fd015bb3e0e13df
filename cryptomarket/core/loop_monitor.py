"""Event-loop stalls, measured inside the process.

A task asks to wake every `interval` seconds; how late it wakes is how long the loop was busy
with something else. Lateness over `threshold` is a stall: logged as one warning line (the soak
benchmark counts them) and kept in `stalls` / `worst` for anyone holding the monitor.
"""

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

logger = logging.getLogger("cryptomarket.loop")


class LoopMonitor:
    def __init__(self, *, interval: float = 0.05, threshold: float = 0.1) -> None:
        self.interval = interval
        self.threshold = threshold
        self.stalls = 0
        self.worst = 0.0  # seconds, the longest lateness seen
        self._task: asyncio.Task[None] | None = None
        # Seconds the garbage collector ran, since start: a stall line says how much of it was
        # collection (a full one walks every tracked object) and how much was our own work.
        self.collecting = 0.0
        self._collection_started = 0.0

    def start(self) -> None:
        if self._task is None:
            gc.callbacks.append(self._on_collection)
            self._task = asyncio.create_task(self._run(), name="loop-monitor")

    async def stop(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            collected_before = self.collecting
            await asyncio.sleep(self.interval)
            late = loop.time() - due
            self.worst = max(self.worst, late)
            if late > self.threshold:
                self.stalls += 1
                logger.warning(
                    "event loop stalled for %.0f ms (garbage collection %.0f ms of it)",
                    late * 1000,
                    min(late, self.collecting - collected_before) * 1000,
                )

    def _on_collection(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._collection_started = time.perf_counter()
        else:
            self.collecting += time.perf_counter() - self._collection_started
