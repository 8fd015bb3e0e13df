"""Stopping a child task without swallowing the caller's own cancellation."""

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended.

    `suppress(CancelledError)` around `await task` cannot tell the child's cancellation from the
    caller's: a caller cancelled while it waits would carry on as if nothing happened. Waiting
    with `asyncio.wait` never raises the child's outcome, so a CancelledError here is always the
    caller's own, and it propagates.
    """
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: its owner logs failures where it spawned it
