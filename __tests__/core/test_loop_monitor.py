"""The event-loop stall monitor sees a blocked loop, and only that."""

import asyncio
import time

from __tests__.helpers import eventually
from cryptomarket.core.loop_monitor import LoopMonitor


async def test_a_blocked_loop_is_one_stall() -> None:
    monitor = LoopMonitor(interval=0.01, threshold=0.1)
    monitor.start()
    try:
        await eventually(lambda: monitor.worst > 0, what="the monitor running")
        assert monitor.stalls == 0
        time.sleep(0.25)  # noqa: ASYNC251  # the point: block the loop, as a bug would
        await eventually(lambda: monitor.stalls == 1, what="the stall counted")
        assert 0.2 < monitor.worst < 1.0
    finally:
        await monitor.stop()
    await asyncio.sleep(0)
