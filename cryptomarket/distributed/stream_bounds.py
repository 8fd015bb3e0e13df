"""What the tick stream may keep: bounded by time and by Redis's memory, never by luck.

The stream's entry ids are the publisher's clock in ms (streaming/redis_bus.py), so trimming by
`MINID now - RETENTION` keeps an hour of ticks whatever their rate: enough for the persist job's
lag and for Last-Event-ID replay. Trimming never passes the first entry the persist group has not
stored (its oldest pending entry, or the one after its last delivered): those wait for it.

When Redis nears its `maxmemory` anyway (many tickers, or the persist job stopped), the stream is
cut harder, oldest first, down to TRIM_TO of the limit. What that cut removes before it was
stored is not lost silently: its span per ticker goes back into the stream as a gap (and any gap
it held, as it was), which the persist job records and the gap backfill fills from Deribit.
"""

import logging
import math
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from cryptomarket.distributed.memory import RedisMemory, read_memory
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.streaming.redis_codec import TICKS_STREAM, pack, read_message

logger = logging.getLogger("cryptomarket.distributed.stream_bounds")

RETENTION_MS = 3_600_000  # an hour of ticks, whatever their rate
TRIM_ABOVE = 0.6  # share of maxmemory past which the stream is cut harder...
TRIM_TO = 0.45  # ...down to this share
PERSIST_GROUP = "persist"  # jobs/persist.py's consumer group
READ_CHUNK = 5_000  # entries read at a time to learn what a cut removes
TRIMMED_REASON = "Redis memory ran short: trimmed from the stream before they were stored"

StreamId = tuple[int, int]


def parse_id(raw: bytes | str) -> StreamId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(entry: StreamId) -> str:
    return f"{entry[0]}-{entry[1]}"


class StreamBounds:
    """Run by the publishing ingest leader every few hundred entries and every second."""

    def __init__(
        self,
        redis: Redis,
        clock: Callable[[], float],
        *,
        retention_ms: int = RETENTION_MS,
        stream: str = TICKS_STREAM,
    ) -> None:
        self.redis = redis
        self._clock = clock
        self.retention_ms = retention_ms
        self.stream = stream
        self.memory: RedisMemory | None = None  # as last read
        self.trimmed = 0  # entries removed, since start
        self.trimmed_unstored = 0  # of those, removed before stored (recorded as gaps)
        self.gaps_recorded = 0

    async def enforce(self) -> None:
        """Trim by age up to the persist job's position; past TRIM_ABOVE, cut harder."""
        unstored = await self.first_unstored()
        oldest_kept = (max(0, int(self._clock() * 1000) - self.retention_ms), 0)
        self.trimmed += await self._trim_before(min(oldest_kept, unstored))
        memory = await read_memory(self.redis)
        self.memory = memory
        if memory.limit and memory.used > TRIM_ABOVE * memory.limit:
            await self._make_room(memory, unstored)

    async def first_unstored(self) -> StreamId:
        """The first entry id the persist job may not have stored yet (0-0: none stored)."""
        try:
            groups: list[dict[str, Any]] = await self.redis.xinfo_groups(self.stream)
        except ResponseError:  # no stream yet
            return (0, 0)
        for group in groups:
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) != PERSIST_GROUP:
                continue
            delivered = parse_id(group["last-delivered-id"])
            after_delivered = (delivered[0], delivered[1] + 1)
            if not group.get("pending"):
                return after_delivered
            summary: dict[str, Any] = await self.redis.xpending(self.stream, PERSIST_GROUP)
            oldest_pending = summary.get("min")
            if oldest_pending is None:  # acknowledged meanwhile: stored
                return after_delivered
            return parse_id(oldest_pending)
        return (0, 0)  # no persist group yet: nothing is known stored

    async def _trim_before(self, first_kept: StreamId) -> int:
        if first_kept <= (0, 0):
            return 0
        removed: int = await self.redis.xtrim(
            self.stream, minid=format_id(first_kept), approximate=False
        )
        return removed

    async def _make_room(self, memory: RedisMemory, unstored: StreamId) -> None:
        info: dict[str, Any] = await self.redis.xinfo_stream(self.stream)
        length = int(info.get("length", 0))
        stream_bytes = int(await self.redis.memory_usage(self.stream) or 0)
        if not length or not stream_bytes or not info.get("first-entry"):
            logger.warning(
                "Redis is near its memory limit (%s), not from the stream", memory.describe()
            )
            return
        first = parse_id(info["first-entry"][0])
        last = parse_id(info["last-entry"][0])
        share = (memory.used - TRIM_TO * memory.limit) / stream_bytes
        if share > 1.0:
            # Even all of the stream would not be enough: the memory is used elsewhere (Celery's
            # queues?). Cut what is stored, never the unstored ticks for so little.
            removed = await self._trim_before(unstored)
            self.trimmed += removed
            logger.warning(
                "Redis near its memory limit (%s), mostly not from the tick stream (%d bytes): "
                "cut its %d stored entries",
                memory.describe(),
                stream_bytes,
                removed,
            )
            return
        if share >= 1.0:
            cut = (last[0], last[1] + 1)  # all of it
        else:
            span = last[0] - first[0] + 1
            cut = (first[0] + max(1, math.ceil(span * share)), 0)
        lost = 0
        if cut > unstored:
            lost = await self._record_lost(max(unstored, first), cut, info)
        removed = await self._trim_before(cut)
        self.trimmed += removed
        self.trimmed_unstored += lost
        logger.warning(
            "Redis near its memory limit (%s): cut %d entries from the tick stream, %d of them "
            "not stored yet (recorded as gaps)",
            memory.describe(),
            removed,
            lost,
        )

    async def _record_lost(self, start: StreamId, cut: StreamId, info: dict[str, Any]) -> int:
        """Put back, as gaps, what the entries in [start, cut) held; how many there were."""
        spans: dict[str, list[int]] = {}
        kept_gaps: list[bytes] = []
        count = 0
        low = format_id(start)
        while True:
            entries: Any = await self.redis.xrange(
                self.stream, min=low, max="(" + format_id(cut), count=READ_CHUNK
            )
            for _entry_id, fields in entries or []:
                count += 1
                read = read_message((fields or {}).get(b"event"))
                event = None if read is None else read[0]
                if isinstance(event, Tick):
                    span = spans.setdefault(event.ticker, [event.timestamp, event.timestamp])
                    span[0] = min(span[0], event.timestamp)
                    span[1] = max(span[1], event.timestamp)
                elif isinstance(event, Gap):
                    kept_gaps.append(pack(event))
            if not entries or len(entries) < READ_CHUNK:
                break
            last_id = entries[-1][0]
            low = "(" + (last_id.decode() if isinstance(last_id, bytes) else last_id)
        gaps = [pack(Gap(t, lo, hi, TRIMMED_REASON)) for t, (lo, hi) in sorted(spans.items())]
        await self._append([*gaps, *kept_gaps], info)
        self.gaps_recorded += len(gaps)
        return count

    async def _append(self, messages: list[bytes], info: dict[str, Any]) -> None:
        """Add at the end of the stream, with ids on the publisher's clock (never before the
        stream's newest id, which may be ahead of it)."""
        if not messages:
            return
        newest = parse_id(info.get("last-generated-id") or b"0-0")
        ms = max(int(self._clock() * 1000), newest[0])
        async with self.redis.pipeline(transaction=False) as pipe:
            for message in messages:
                pipe.xadd(self.stream, {"event": message}, id=f"{ms}-*")
            await pipe.execute()
