"""The event-loop stall monitor sees a blocked loop, and only that."""

import asyncio
import gc
import time

import pytest

from __tests__.helpers import eventually
from cryptomarket.core.loop_monitor import LoopMonitor


async def test_a_blocked_loop_is_one_stall() -> None:
    monitor = LoopMonitor(interval=0.01, threshold=0.1)
    monitor.start()
    try:
        await eventually(lambda: monitor.worst > 0, what="the monitor running")
        assert monitor.stalls == 0
        monitor.poke()  # work starts (a market event, a request) ...
        time.sleep(0.25)  # noqa: ASYNC251  # the point: block the loop, as a bug would
        await eventually(lambda: monitor.stalls == 1, what="the stall counted")
        assert 0.2 < monitor.worst < 1.0
    finally:
        await monitor.stop()
    await asyncio.sleep(0)


async def test_a_stall_says_how_much_of_it_was_garbage_collection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = LoopMonitor(interval=0.01, threshold=0.1)
    monitor.start()
    try:
        await eventually(lambda: monitor.worst > 0, what="the monitor running")
        garbage = [[] for _ in range(200_000)]  # tracked containers: a full collection walks them
        monitor.poke()
        started = time.perf_counter()
        while time.perf_counter() - started < 0.15:  # block the loop
            gc.collect()
        await eventually(lambda: monitor.stalls == 1, what="the stall counted")
        del garbage
    finally:
        await monitor.stop()
    assert monitor.collecting > 0.1
    (line,) = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    collected_ms = int(line.split("garbage collection ")[1].split(" ms")[0])
    assert collected_ms >= 100, line


async def test_with_no_work_it_wakes_the_loop_only_at_its_idle_interval() -> None:
    """Waking an idle process is what costs: with nothing poked, the timer goes slow; a poke
    (a market event, a request) brings it back at once, and a stall then is seen."""
    monitor = LoopMonitor(interval=0.01, threshold=0.1, idle_interval=30)
    loop = asyncio.get_running_loop()
    monitor.start()
    try:
        await eventually(lambda: monitor.worst > 0, what="the first check")
        check = monitor.next_check
        assert check is not None
        assert check - loop.time() > 1  # nothing poked: the next check is the idle one
        monitor.poke()
        check = monitor.next_check
        assert check is not None
        assert check - loop.time() <= 0.01
        time.sleep(0.25)  # noqa: ASYNC251  # the work that was poked blocks the loop
        await eventually(lambda: monitor.stalls == 1, what="the stall counted")
        monitor.poke()  # work goes on: the checks stay close
        await eventually(
            lambda: (monitor.next_check or 0) - loop.time() > 1, what="back to the idle interval"
        )
    finally:
        await monitor.stop()
