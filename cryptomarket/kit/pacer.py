"""At most so many callers resume per round of the event loop; the rest wait their turn.

A round of the loop runs every callback that became ready before it, one after the other, and
nothing else meanwhile: no timer, no socket. When one answer wakes a thousand waiters at once
(after a restart every stream of a user asks for the same session at about the same moment),
the round that resumes them all holds the loop for as long as all their work takes, and every
other stream's tick waits that out. Passing through a pacer, the first `per_round` go on at once
and the others follow `per_round` a round, with timers and sockets served in between. The total
work is the same.
"""

import asyncio
from collections import deque

PER_ROUND = 64


class Pacer:
    def __init__(self, per_round: int = PER_ROUND) -> None:
        self.per_round = per_round
        self._left = per_round  # turns left in this round
        self._waiting: deque[asyncio.Future[None]] = deque()
        # The loop a callback starting the next round's turns is scheduled on (None: none is).
        # Kept per loop: one that closed before running it must not leave the turns stuck.
        self._round_ends_on: asyncio.AbstractEventLoop | None = None

    async def turn(self) -> None:
        """Return in this round if it has turns left, else in a later one (in arrival order)."""
        if self._left > 0 and not self._waiting:
            self._left -= 1
            self._end_round_soon()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._end_round_soon()
        await waiter

    def _end_round_soon(self) -> None:
        loop = asyncio.get_running_loop()
        if self._round_ends_on is not loop:
            self._round_ends_on = loop
            loop.call_soon(self._next_round, loop)

    def _next_round(self, loop: asyncio.AbstractEventLoop) -> None:
        """Runs in the next round: its turns go to the longest waiting first."""
        self._round_ends_on = None
        self._left = self.per_round
        while self._waiting and self._left > 0:
            waiter = self._waiting.popleft()
            # A caller that gave up while waiting takes no turn, nor one of a closed loop.
            if not waiter.done() and waiter.get_loop() is loop:
                waiter.set_result(None)
                self._left -= 1
        if self._waiting or self._left < self.per_round:
            self._end_round_soon()
