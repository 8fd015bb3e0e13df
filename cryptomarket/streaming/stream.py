"""One open SSE connection as the hub sees it: its subscriptions, the newest price it was sent
per ticker, and the frames waiting for its response to write them."""

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from cryptomarket.prices.models import Tick

logger = logging.getLogger("cryptomarket.streaming")


class Body(Protocol):
    """Where a frame can go out at once (core/server.py's LeanFlowControl): False when it cannot."""

    def write(self, data: bytes) -> bool: ...


class Stream:
    """One open SSE connection: its subscriptions and the frames waiting for it.

    Thousands of these live at once, so each is small: slots, a list as the buffer, and at most
    one future, made only while its writer waits for something to write.

    While its writer waits with nothing buffered, a frame pushed is written at once to the
    connection's body (when its server gives one: `attach`), so a fan-out costs one write per
    stream and wakes no task. A frame the body cannot take now (its client reads slower) is
    buffered instead, and so is every frame after it until the writer has sent them all: the
    order on the wire is the order pushed.
    """

    __slots__ = (
        "_body",
        "_buffer",
        "_direct",
        "_waiter",
        "account_id",
        "closed",
        "default_timer",
        "dropped",
        "id",
        "key_id",
        "last_sent",
        "max_buffered",
        "on_drop",
        "opening_changes",
        "quiet_sweeps",
        "schedules",
        "timers",
        "token",
        "user_id",
        "writer",
    )

    def __init__(
        self,
        id: str,
        user_id: str,
        default_timer: int,
        max_buffered: int = 2_000,
        on_drop: Callable[["Stream"], None] | None = None,
        *,
        token: str | None = None,
        key_id: str | None = None,
        account_id: int | None = None,
    ) -> None:
        self.id = id
        self.user_id = user_id
        self.account_id = account_id  # the Deribit account owning user_id, if known
        self.token = token  # the session it was opened with (None: the key headers)
        self.key_id = key_id  # the client id of the key headers it was opened with
        self.default_timer = default_timer
        self.max_buffered = max_buffered  # a client this far behind is dropped
        # Called when the stream is dropped: unregister it and abort the response writing to it.
        self.on_drop = on_drop
        self.timers: dict[str, int] = {}  # ticker -> effective seconds
        # ticker -> the id of its live timer entry in the hub's schedule: an entry of an earlier
        # subscription of the same ticker is stale even when its timer was the same.
        self.schedules: dict[str, int] = {}
        self.last_sent: dict[str, int] = {}  # ticker -> newest timestamp sent
        self.closed = False
        self.dropped = False
        self.quiet_sweeps = 0  # ping sweeps since the last frame: the hub pings idle streams
        self.writer: asyncio.Task[Any] | None = None
        self._buffer: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._body: Body | None = None  # the connection's, when its server gives one
        self._direct: Body | None = None  # the body, while frames may go to it at once
        # Changes by create/cancel made while the stream's stored subscriptions were being read,
        # newer than what was read: ticker -> its timer (None: cancelled). They are applied with
        # the stored ones once the replay is known (hub.settle). None: the stream is set up.
        self.opening_changes: dict[str, int | None] | None = None

    def attach(self, body: Body | None) -> None:
        """Write frames to `body` at once whenever nothing is waiting to go before them."""
        self._body = body

    def push(self, frame: bytes) -> bool:
        if self.closed:
            return False
        if (direct := self._direct) is not None:
            if direct.write(frame):
                self.quiet_sweeps = 0
                return True
            self._direct = None  # this one and those after it wait for the writer
        # One latest price per subscription may arrive at once (on connect) on top of the bound.
        if len(self._buffer) >= self.max_buffered + len(self.timers):
            logger.warning(
                "stream %s of %s dropped: %d events unread",
                self.id,
                self.user_id,
                len(self._buffer),
            )
            self.dropped = True
            self._buffer.clear()
            self.close()
            if self.on_drop is not None:
                self.on_drop(self)
            return False
        self._buffer.append(frame)
        self.quiet_sweeps = 0
        self._wake()
        return True

    def push_price(self, tick: Tick, frame: bytes) -> bool:
        """A price, unless this stream already has it or a newer one."""
        if tick.timestamp > self.last_sent.get(tick.ticker, 0):
            self.last_sent[tick.ticker] = tick.timestamp
            return self.push(frame)
        return False

    def close(self) -> None:
        self.closed = True
        self._wake()

    def forget(self) -> None:
        """Drop what a closed stream still holds, so stale timer entries pin nothing big."""
        self._buffer.clear()
        self.timers.clear()
        self.schedules.clear()
        self.last_sent.clear()

    async def next_chunk(self) -> bytes | None:
        """Every frame buffered so far, as one chunk; waits while there is none. None: the
        stream is over (closed after its buffer was written, or dropped)."""
        while True:
            if self.dropped:
                return None  # too slow to keep: what it missed stays missed
            if self._buffer:
                chunk = b"".join(self._buffer)
                self._buffer.clear()
                return chunk
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            self._direct = self._body  # nothing is buffered: a frame may go out at once
            try:
                await self._waiter
            finally:
                self._waiter = None
                self._direct = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
