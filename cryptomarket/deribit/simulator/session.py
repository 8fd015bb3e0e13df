"""One client socket: its outgoing frames (latency, silence, ordered close), heartbeat and state."""

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from cryptomarket.deribit.simulator import rpc
from cryptomarket.deribit.simulator.tokens import Grant

log = logging.getLogger("cryptomarket.simulator")

# A client that lets this many frames pile up is too slow; Deribit drops those too.
MAX_PENDING_FRAMES = 10_000
HEARTBEAT_CLOSE = (4000, "heartbeat close")


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


class Session:
    """Outgoing frames leave in order of their due time: latency delays them all alike, so
    notifications keep their order, while reply jitter lets answers overtake one another, as
    Deribit's may. A close (after 10028, logout or a missed heartbeat) leaves after every frame
    queued before it."""

    def __init__(
        self,
        connection_id: int,
        ws: ServerConnection,
        ip: str,
        latency: Callable[[], float],
        jitter: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.id = connection_id
        self.ws = ws
        self.ip = ip
        self.subscriptions: set[str] = set()
        self.grant: Grant | None = None  # the socket's own prior `public/auth`
        self.silent_until = 0.0  # loop time; sim/go_silent
        self.closing = False
        self._latency = latency
        self._jitter = jitter
        self._loop = asyncio.get_running_loop()
        self._outbox: list[tuple[float, int, str | _Close]] = []  # a heap by (due, order)
        self._order = itertools.count()
        self._last_due = 0.0
        self._last_ordered_due = 0.0  # of the latest notification queued
        self._wakeup = asyncio.Event()
        self._sender = asyncio.create_task(self._send_loop(), name=f"sim-send-{connection_id}")
        self._heartbeat: asyncio.Task[None] | None = None
        self._test_pending = False  # a test_request went out and no public/test came back yet

    @property
    def silent(self) -> bool:
        return self._loop.time() < self.silent_until

    def send(self, frame: str, *, reply: bool = False) -> None:
        """Queue a frame; while silent or closing it is discarded."""
        if self.closing or self.silent:
            return
        if len(self._outbox) >= MAX_PENDING_FRAMES:
            log.warning(
                "connection %d: client too slow, %d frames pending", self.id, MAX_PENDING_FRAMES
            )
            self.abort()
            return
        due = self._loop.time() + self._latency()
        jitter = self._jitter() if reply else 0.0
        if jitter:
            due += random.uniform(0.0, jitter)
        elif not reply:
            # One TCP stream: a notification never overtakes an earlier one, even when the
            # latency was just lowered (only jittered replies may overtake).
            due = max(due, self._last_ordered_due)
            self._last_ordered_due = due
        self._enqueue(due, frame)

    def close(self, code: int, reason: str) -> None:
        """Close gracefully after the frames already queued; nothing more is sent or handled."""
        if self.closing:
            return
        self.closing = True
        self._stop_heartbeat()
        due = max(self._last_due, self._loop.time() + self._latency())
        self._enqueue(due, _Close(code, reason))

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, like a network failure."""
        self.closing = True
        self._stop_heartbeat()
        self.ws.transport.abort()

    def set_heartbeat(self, interval: float) -> None:
        self._stop_heartbeat()
        self._heartbeat = asyncio.create_task(
            self._heartbeat_loop(interval), name=f"sim-heartbeat-{self.id}"
        )

    def disable_heartbeat(self) -> None:
        self._stop_heartbeat()

    def heartbeat_answered(self) -> None:
        self._test_pending = False

    async def shutdown(self) -> None:
        """Stop this session's tasks (the socket is closed or closing)."""
        self.closing = True
        self._stop_heartbeat()
        tasks = [t for t in (self._sender, self._heartbeat) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat is not asyncio.current_task():
            self._heartbeat.cancel()
        self._heartbeat = None
        self._test_pending = False

    async def _heartbeat_loop(self, interval: float) -> None:
        # A test_request every interval; the next tick finds it unanswered -> close 4000.
        while True:
            await asyncio.sleep(interval)
            if self.silent:
                self._test_pending = False  # a silenced socket cannot answer; don't punish it
                continue
            if self._test_pending:
                log.info("connection %d: test_request unanswered, closing", self.id)
                self.close(*HEARTBEAT_CLOSE)
                return
            self._test_pending = True
            self.send(rpc.heartbeat("test_request"))

    def _enqueue(self, due: float, item: str | _Close) -> None:
        self._last_due = max(self._last_due, due)
        heapq.heappush(self._outbox, (due, next(self._order), item))
        self._wakeup.set()

    async def _next_due(self) -> str | _Close:
        """The frame whose time has come; an earlier one queued meanwhile goes first."""
        while True:
            self._wakeup.clear()
            if not self._outbox:
                await self._wakeup.wait()
                continue
            delay = self._outbox[0][0] - self._loop.time()
            if delay <= 0:
                return heapq.heappop(self._outbox)[2]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()

    async def _send_loop(self) -> None:
        try:
            while True:
                item = await self._next_due()
                if isinstance(item, _Close):
                    await self.ws.close(item.code, item.reason)
                    return
                if not self.silent:
                    await self.ws.send(item)
        except ConnectionClosed:
            return
