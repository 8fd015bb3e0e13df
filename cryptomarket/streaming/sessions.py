"""Open streams re-checked against the store: a stream outlives neither its session nor its key.

A stream opened with a session token ends when the session expired or was signed out; one opened
with the seed's key headers ends when its user is gone or the stored key is another one (another
client id). The hub's timer loop starts one check of every open stream each `interval` seconds,
a few batched queries for all of them (never a task or a query per stream), and `now()` starts one
at once: when a replica's control channel returns, since sign-outs announced while it was away
were never heard. An ended stream gets a `session_ended` event saying why, then its end.

A check that fails (the store is away) ends nothing; the next one tries again.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptomarket.streaming.stream import Stream

logger = logging.getLogger("cryptomarket.streaming")

DEFAULT_INTERVAL = 30.0  # seconds; SSE_SESSION_RECHECK
# Why a stream ended, as its `session_ended` event says.
EXPIRED = "expired"
SIGNED_OUT = "signed_out"
KEY_CHANGED = "key_changed"

# A signed-out session is remembered this long, at most this many: far longer than any stream
# takes from its session check to its registration, and sign-outs are rare.
SIGNED_OUT_KEPT_SECONDS = 300.0
SIGNED_OUT_KEPT = 10_000

# The streams to end, with why; the streams not named stay.
Check = Callable[[list["Stream"]], Awaitable[dict["Stream", str]]]


class SessionRecheck:
    def __init__(
        self,
        streams: Callable[[], list["Stream"]],
        end: Callable[["Stream", str], None],
        replan: Callable[[], None],
    ) -> None:
        self._streams = streams
        self._end = end
        self._replan = replan  # the timer loop re-plans its next wake-up
        self.check: Check | None = None  # none: nothing is re-checked (set by the runtime)
        self._interval = DEFAULT_INTERVAL
        self.next_at: float | None = None  # loop time of the next periodic check
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.checks = 0  # completed, since start
        self.ended = 0  # streams ended by a check, since start

    @property
    def interval(self) -> float:
        return self._interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        self._interval = seconds
        self.next_at = None
        self._replan()

    def due(self, now: float) -> float | None:
        """Called by the timer loop: start a check when one is due; when the next one is."""
        if self.check is None:
            return None
        if self.next_at is None:
            self.next_at = now + self._interval
        elif now >= self.next_at:
            self.now()
            self.next_at = now + self._interval
        return self.next_at

    def now(self) -> None:
        """Check every open stream now (once more after the check under way, if one is)."""
        if self.check is None:
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run(self.check), name="stream-sessions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self, check: Check) -> None:
        while True:
            self._again = False
            streams = [stream for stream in self._streams() if not stream.closed]
            verdicts: dict[Stream, str] = {}
            if streams:
                try:
                    verdicts = await check(streams)
                except Exception as error:
                    logger.warning("open streams' sessions not re-checked: %r", error)
            for stream, reason in verdicts.items():
                if not stream.closed:
                    self.ended += 1
                    self._end(stream, reason)
            self.checks += 1
            if not self._again:
                return


class RecentlySignedOut:
    """Sessions signed out lately, by the hash the store keeps of them.

    A sign-out ends the streams registered with the session; a stream still opening (its session
    read as valid just before the sign-out committed) is not registered yet, so it checks here as
    it registers, with no await in between, and is refused."""

    def __init__(
        self,
        keep_seconds: float = SIGNED_OUT_KEPT_SECONDS,
        keep: int = SIGNED_OUT_KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keep_seconds = keep_seconds
        self._keep = keep
        self._clock = clock
        self._ended: OrderedDict[str, float] = OrderedDict()  # session hash -> when, oldest first

    def __len__(self) -> int:
        return len(self._ended)

    def add(self, session: str) -> None:
        self._ended[session] = self._clock()
        self._ended.move_to_end(session)
        self._prune()

    def __contains__(self, session: str) -> bool:
        self._prune()
        return session in self._ended

    def _prune(self) -> None:
        oldest = self._clock() - self._keep_seconds
        while self._ended and (
            len(self._ended) > self._keep or next(iter(self._ended.values())) < oldest
        ):
            self._ended.popitem(last=False)
