"""Slow refusals for clients that ignore Retry-After.

A 429 is cheap, but not free: a client that loops on refusals without waiting makes the server
answer hundreds a second, and every answer is time the event loop does not spend on live
streams. The first refusal of a client goes out at once, with its Retry-After; one that comes
back before that time is up waits (at most HOLD seconds) before its answer, so a flooder's rate
falls to about one refusal a second per connection. A client that waits as told never notices.
"""

import asyncio
import time
from collections import Counter, OrderedDict

HOLD = 1.0  # seconds at most a refusal is held
MAX_HELD = 64  # refusals held at once per client; past it they go out at once
MAX_TRACKED = 10_000  # clients remembered; the least recently refused is forgotten


class Tarpit:
    def __init__(self, *, hold: float = HOLD) -> None:
        self.hold = hold
        self._told_until: OrderedDict[str, float] = OrderedDict()  # client -> its Retry-After
        self._held: Counter[str] = Counter()

    async def refuse(self, client: str, retry_after: float | None) -> None:
        """Call before sending a 429 to `client`: returns at once, or after holding it."""
        now = time.monotonic()
        told = self._told_until.get(client, 0.0)
        if retry_after is not None:
            self._told_until[client] = max(told, now + retry_after)
            self._told_until.move_to_end(client)
            while len(self._told_until) > MAX_TRACKED:
                self._told_until.popitem(last=False)
        if now >= told or self._held[client] >= MAX_HELD:
            return
        self._held[client] += 1
        try:
            await asyncio.sleep(min(self.hold, told - now))
        finally:
            self._held[client] -= 1
            if not self._held[client]:
                del self._held[client]
