"""Small waiting helpers: await a condition instead of sleeping a fixed time."""

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Return as soon as `condition()` holds; fail after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110  # the condition has no event to await
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what or condition}") from None


async def eventually_async(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Like `eventually`, for a condition that has to be awaited (an HTTP call, a query)."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110  # the condition has no event to await
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what or check}") from None
