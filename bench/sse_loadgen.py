"""Load generator of the SSE benchmarks in Python: thousands of SSE clients in one process.

`--clients python` of bench_sse and bench_redis_fanout; by default they use its C twin,
bench/sse_cclient.c, which does the same for a fraction of the CPU (bench/clients.py says why).

Raw asyncio protocols over loopback: a minimal HTTP/1.1 GET, a chunked-body decoder and a tiny
event-stream parser (CRLF or LF line ends, `event:` and `data:` lines, comments ignored). For
every `price` event it reads the `timestamp` field and, when the timestamp lies in the armed
window [w0, w1), counts it for its connection and records latency = wall clock at receipt - the
timestamp (ms). Works the same for every server, so the comparison stays fair.

Driven over stdin/stdout, one JSON object per line:
    {"cmd": "open", "host", "port", "requests": [raw HTTP request, ...], "count", "concurrency"}
    {"cmd": "arm", "w0": ms, "w1": ms}     count price events with w0 <= timestamp < w1
    {"cmd": "report"}                       the counts so far
    {"cmd": "close"}                        close every connection and exit
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
from typing import Any

from bench.sse_common import raise_nofile, run_fast

HEAD_LIMIT = 65_536


class Stats:
    def __init__(self) -> None:
        self.w0 = 0
        self.w1 = 0  # nothing counts until armed
        self.latency_bins: collections.Counter[int] = collections.Counter()  # 0.1 ms bins
        self.per_tick: collections.Counter[int] = collections.Counter()  # timestamp -> receipts
        self.first: dict[int, float] = {}  # timestamp -> first receipt latency (ms)
        self.last: dict[int, float] = {}  # timestamp -> last receipt latency (ms)
        # timestamp -> its latencies in 1 ms bins: each tick's own, to take its send delay off
        self.tick_bins: dict[int, collections.Counter[int]] = {}
        self.duplicates = 0  # a connection got a timestamp it had already had (or an older one)
        self.price_events = 0  # all price events, in the window or not
        self.bytes = 0


class Conn(asyncio.Protocol):
    __slots__ = (
        "chunk_left",
        "chunk_skip",
        "chunked",
        "closed",
        "closed_at",
        "count",
        "error",
        "head",
        "head_done",
        "last_ts",
        "raw",
        "ready",
        "request",
        "sse",
        "stats",
        "transport",
    )  # fmt: skip

    def __init__(self, stats: Stats, request: bytes, ready: asyncio.Future[None]) -> None:
        self.stats = stats
        self.request = request
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.head_done = False
        self.chunked = False
        self.chunk_left = 0  # data bytes still to read in the current chunk
        self.chunk_skip = 0  # CRLF bytes after a chunk still to skip
        self.raw = b""  # undecoded chunked body
        self.sse = b""  # decoded event-stream text not yet ending in a blank line
        self.count = 0  # price events in the window
        self.last_ts = 0
        self.closed = False
        self.closed_at = 0.0
        self.error = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.transport.write(self.request)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.closed_at = time.time()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before headers: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.stats.bytes += len(data)
        if not self.head_done:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > HEAD_LIMIT:
                    self._fail("response head too long")
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.head = b""
            status = head.split(b" ", 2)
            if len(status) < 2 or status[1] != b"200":
                self._fail(f"HTTP {status[1].decode(errors='replace') if len(status) > 1 else '?'}")
                return
            self.chunked = b"transfer-encoding: chunked" in head.lower()
            self.head_done = True
            if not self.ready.done():
                self.ready.set_result(None)
            if not data:
                return
        self._events(self._dechunk(data) if self.chunked else data, now)

    def _fail(self, reason: str) -> None:
        self.error = reason
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()

    def _dechunk(self, data: bytes) -> bytes:
        raw = self.raw + data if self.raw else data
        out = []
        pos, size = 0, len(raw)
        while pos < size:
            if self.chunk_left:
                take = min(self.chunk_left, size - pos)
                out.append(raw[pos : pos + take])
                pos += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self.chunk_skip = 2
            elif self.chunk_skip:
                take = min(self.chunk_skip, size - pos)
                pos += take
                self.chunk_skip -= take
            else:
                line_end = raw.find(b"\r\n", pos)
                if line_end < 0:
                    break
                length = int(raw[pos:line_end].split(b";", 1)[0], 16)
                pos = line_end + 2
                if length == 0:  # the last chunk: the server ended the stream
                    pos = size
                    break
                self.chunk_left = length
        self.raw = raw[pos:]
        return b"".join(out)

    def _events(self, text: bytes, now: float) -> None:
        buffer = self.sse + text if self.sse else text
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")  # a CR left at the end meets its LF next time
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            block = buffer[start:end]
            start = end + 2
            event = data = b""
            for line in block.split(b"\n"):
                if line.startswith(b"event:"):
                    event = line[6:].strip()
                elif line.startswith(b"data:"):
                    data = line[5:]
            if event == b"price":
                self._price(data, now)
        self.sse = buffer[start:]

    def _price(self, data: bytes, now: float) -> None:
        stats = self.stats
        stats.price_events += 1
        at = data.find(b'"timestamp":')
        if at < 0:
            return
        at += 12
        stop = at
        while data[stop : stop + 1] not in (b",", b"}", b""):
            stop += 1
        timestamp = int(data[at:stop])
        if not stats.w0 <= timestamp < stats.w1:
            self.last_ts = max(self.last_ts, timestamp)
            return
        if timestamp <= self.last_ts:
            stats.duplicates += 1
            return
        self.last_ts = timestamp
        self.count += 1
        stats.per_tick[timestamp] += 1
        latency = now * 1000.0 - timestamp
        stats.latency_bins[max(0, int(latency * 10))] += 1
        if timestamp not in stats.first:
            stats.first[timestamp] = latency
            stats.tick_bins[timestamp] = collections.Counter()
        stats.last[timestamp] = latency
        stats.tick_bins[timestamp][max(0, int(latency))] += 1


class LoadGen:
    def __init__(self) -> None:
        self.stats = Stats()
        self.conns: list[Conn] = []
        self.open_errors: collections.Counter[str] = collections.Counter()

    async def open(self, command: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        host, port = command["host"], int(command["port"])
        requests = [request.encode() for request in command["requests"]]
        count, timeout = int(command["count"]), float(command.get("timeout", 60))
        semaphore = asyncio.Semaphore(int(command.get("concurrency", 100)))
        started = time.monotonic()
        errors: collections.Counter[str] = collections.Counter()

        async def one(index: int) -> None:
            async with semaphore:
                ready: asyncio.Future[None] = loop.create_future()
                conn = Conn(self.stats, requests[index % len(requests)], ready)
                try:
                    async with asyncio.timeout(timeout):
                        await loop.create_connection(lambda: conn, host, port)
                        await ready
                except (OSError, TimeoutError, ConnectionError) as error:
                    errors[str(error)[:80] or type(error).__name__] += 1
                    if conn.transport is not None:
                        conn.transport.abort()
                    return
                self.conns.append(conn)

        await asyncio.gather(*(one(i) for i in range(count)))
        self.open_errors.update(errors)
        return {
            "opened": count - sum(errors.values()),
            "failed": sum(errors.values()),
            "errors": dict(errors.most_common(5)),
            "seconds": round(time.monotonic() - started, 3),
        }

    def arm(self, command: dict[str, Any]) -> dict[str, Any]:
        self.stats.w0, self.stats.w1 = int(command["w0"]), int(command["w1"])
        for conn in self.conns:
            conn.count = 0
        self.stats.latency_bins.clear()
        self.stats.per_tick.clear()
        self.stats.first.clear()
        self.stats.last.clear()
        self.stats.tick_bins.clear()
        self.stats.duplicates = 0
        return {"armed": True}

    def report(self) -> dict[str, Any]:
        stats = self.stats
        counts = collections.Counter(conn.count for conn in self.conns)
        closed = [conn for conn in self.conns if conn.closed]
        return {
            "connections": len(self.conns),
            "closed": len(closed),
            "closed_in_window": sum(1 for c in closed if c.closed_at * 1000 >= stats.w0),
            "per_conn_counts": {str(k): v for k, v in counts.items()},
            "per_tick": {str(k): v for k, v in stats.per_tick.items()},
            "latency_bins": {str(k): v for k, v in stats.latency_bins.items()},
            "first": {str(k): round(v, 2) for k, v in stats.first.items()},
            "last": {str(k): round(v, 2) for k, v in stats.last.items()},
            "tick_bins": {
                str(ts): {str(ms): n for ms, n in bins.items()}
                for ts, bins in stats.tick_bins.items()
            },
            "duplicates": stats.duplicates,
            "price_events": stats.price_events,
            "bytes": stats.bytes,
        }

    def close(self) -> dict[str, Any]:
        for conn in self.conns:
            if conn.transport is not None and not conn.closed:
                conn.transport.abort()
        return {"closed": True}


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    gen = LoadGen()

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        command = json.loads(line)
        name = command["cmd"]
        if name == "open":
            reply(await gen.open(command))
        elif name == "arm":
            reply(gen.arm(command))
        elif name == "report":
            reply(gen.report())
        elif name == "close":
            reply(gen.close())
            await asyncio.sleep(0.2)
            return
        else:
            reply({"error": f"unknown command {name!r}"})


def main() -> None:
    soft, hard = raise_nofile()
    sys.stderr.write(f"sse_loadgen: RLIMIT_NOFILE {soft}/{hard}\n")
    run_fast(serve)


if __name__ == "__main__":
    main()
