"""Every tick one index produced, for a bounded time: the ground truth behind `sim/produced`.

Ticks are kept in fixed-size chunks of two packed arrays (16 bytes a tick instead of a tuple's
~100), so 47 indexes at 10 ticks/s for two hours stay near 55 MB. Whole chunks are forgotten once
their newest tick is older than the retention, so at least `keep_ms` is always kept.
"""

from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator

CHUNK = 4096


class _Chunk:
    __slots__ = ("prices", "stamps")

    def __init__(self) -> None:
        self.stamps = array("q")
        self.prices = array("d")


class TickRecord:
    """Chronological (timestamp_ms, price) pairs with strictly increasing timestamps."""

    def __init__(self, keep_ms: int) -> None:
        self.keep_ms = keep_ms
        self.forgotten_until = 0  # the newest timestamp already forgotten (0: nothing yet)
        self._chunks: deque[_Chunk] = deque()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, timestamp: int, price: float) -> None:
        if not self._chunks or len(self._chunks[-1].stamps) >= CHUNK:
            self._chunks.append(_Chunk())
        chunk = self._chunks[-1]
        chunk.stamps.append(timestamp)
        chunk.prices.append(price)
        self._count += 1
        # Forget a whole chunk only when every tick in it is past the retention.
        while len(self._chunks) > 1 and self._chunks[0].stamps[-1] < timestamp - self.keep_ms:
            old = self._chunks.popleft()
            self.forgotten_until = old.stamps[-1]
            self._count -= len(old.stamps)

    def last(self) -> tuple[int, float] | None:
        if not self._count:
            return None
        chunk = self._chunks[-1]
        return chunk.stamps[-1], chunk.prices[-1]

    def between(self, since: int | None = None, until: int | None = None) -> list[list[float]]:
        """[timestamp_ms, price] of the ticks with since < timestamp <= until, oldest first."""
        return [[ts, price] for ts, price in self._iter(since, until)]

    def pairs(self, since: int | None = None, until: int | None = None) -> list[tuple[int, float]]:
        return list(self._iter(since, until))

    def complete(self, since: int | None) -> bool:
        """Whether every tick after `since` is still kept."""
        if self.forgotten_until == 0:
            return True
        return since is not None and since >= self.forgotten_until

    def at_or_before(self, timestamp: int) -> tuple[int, float] | None:
        """The newest tick at or before `timestamp`, if still kept."""
        for chunk in reversed(self._chunks):
            if chunk.stamps[0] <= timestamp:
                i = bisect_right(chunk.stamps, timestamp) - 1
                return chunk.stamps[i], chunk.prices[i]
        return None

    def _iter(self, since: int | None, until: int | None) -> Iterator[tuple[int, float]]:
        for chunk in self._chunks:
            stamps = chunk.stamps
            if since is not None and stamps[-1] <= since:
                continue
            if until is not None and stamps[0] > until:
                return
            start = 0 if since is None else bisect_right(stamps, since)
            end = len(stamps) if until is None else bisect_left(stamps, until + 1)
            yield from zip(stamps[start:end], chunk.prices[start:end], strict=True)
