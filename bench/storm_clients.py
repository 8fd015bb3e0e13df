"""Clients of the reconnect-storm benchmark: thousands of EventSource-like SSE clients in one
process, each a chain of connections that resumes with Last-Event-ID when its stream is cut.

Like an EventSource: after a stream ends (or a connect is refused while the server is down) a
client waits the server's `retry:` (3 s unless the server said otherwise) and connects again,
sending the id of the last event it got. Every connection records what the chaos ledger checks
(bench/chaos/ledger.py `streams`): when `connected` came, its timer=0 tickers, each price's
timestamp and each `gap`.

Driven over stdin/stdout, one JSON object per line:
    {"cmd": "open", "host", "port", "requests": [raw HTTP request head, ...], "count",
     "concurrency"}                     start the clients; answers once each is connected
    {"cmd": "status"}                   per client, when its newest response began
    {"cmd": "stop"}                     stop reconnecting, close everything; every connection
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from bench.sse_common import raise_nofile, run_fast
from bench.sse_loadgen import Conn, Stats

DEFAULT_RETRY = 3.0  # seconds, EventSource's wait before reconnecting until the server says


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Record:
    """One connection of a chain, as the ledger reads it (bench/chaos/clients.py Connection)."""

    __slots__ = ("chain", "closed_ms", "gaps", "opened_ms", "prices", "tickers")

    def __init__(self, chain: str) -> None:
        self.chain = chain
        self.opened_ms = 0
        self.closed_ms = 0
        self.tickers: list[str] = []
        self.prices: dict[str, list[int]] = {}
        self.gaps: dict[str, list[tuple[int, int]]] = {}

    def as_json(self) -> dict[str, Any]:
        return {slot: getattr(self, slot) for slot in self.__slots__}


class ResumingConn(Conn):
    """One response of a chain: every event recorded, the last id and retry kept."""

    __slots__ = ("client", "lost", "record")

    def __init__(self, client: Client, request: bytes, ready: asyncio.Future[None]) -> None:
        super().__init__(Stats(), request, ready)
        self.client = client
        self.record = Record(client.name)
        self.lost: asyncio.Future[None] = ready.get_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.record.closed_ms = now_ms()
        if not self.lost.done():
            self.lost.set_result(None)

    def _events(self, text: bytes, now: float) -> None:
        buffer = self.sse + text if self.sse else text
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            block, start = buffer[start:end], end + 2
            fields: dict[bytes, bytes] = {}
            for line in block.split(b"\n"):
                name, _, value = line.partition(b":")
                fields[name] = value.removeprefix(b" ")
            if b"retry" in fields and fields[b"retry"].isdigit():
                self.client.retry = int(fields[b"retry"]) / 1000
            if b"id" in fields:
                self.client.last_event_id = fields[b"id"].decode()
            self._event(fields.get(b"event", b""), fields.get(b"data", b""))
        self.sse = buffer[start:]

    def _event(self, event: bytes, data: bytes) -> None:
        record = self.record
        if event == b"price":
            price = json.loads(data)
            record.prices.setdefault(price["ticker"], []).append(int(price["timestamp"]))
        elif event == b"connected":
            record.opened_ms = now_ms()
            connected = json.loads(data)
            record.tickers = [s["ticker"] for s in connected["subscriptions"] if s["timer"] == 0]
        elif event == b"gap":
            gap = json.loads(data)
            record.gaps.setdefault(gap["ticker"], []).append((int(gap["from"]), int(gap["to"])))


class Client:
    def __init__(self, name: str, head: str, host: str, port: int) -> None:
        self.name = name
        self.head = head  # the request without its blank line: Last-Event-ID goes after it
        self.host, self.port = host, port
        self.retry = DEFAULT_RETRY
        self.last_event_id: str | None = None
        self.connected_ms = 0  # when its newest response began
        self.records: list[Record] = []
        self.current: ResumingConn | None = None

    def request(self) -> bytes:
        resume = f"Last-Event-ID: {self.last_event_id}\r\n" if self.last_event_id else ""
        return f"{self.head}{resume}\r\n".encode()

    async def run(self, first: asyncio.Future[None], gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        while True:
            ready: asyncio.Future[None] = loop.create_future()
            conn = ResumingConn(self, self.request(), ready)
            try:
                async with gate:
                    await loop.create_connection(lambda: conn, self.host, self.port)  # noqa: B023
                    await ready
            except (OSError, ConnectionError):
                await asyncio.sleep(self.retry)  # refused: the server is not back yet
                continue
            self.connected_ms = now_ms()  # the response began: the server took the stream
            self.current = conn
            self.records.append(conn.record)
            if not first.done():
                first.set_result(None)
            await conn.lost
            self.current = None
            await asyncio.sleep(self.retry)

    def stop(self) -> None:
        if self.current is not None and self.current.transport is not None:
            self.current.record.closed_ms = now_ms()
            self.current.transport.abort()


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    clients: list[Client] = []
    tasks: list[asyncio.Task[None]] = []

    def reply(message: Any) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        command = json.loads(line)
        if command["cmd"] == "open":
            gate = asyncio.Semaphore(int(command.get("concurrency", 200)))
            heads = [request.removesuffix("\r\n\r\n") + "\r\n" for request in command["requests"]]
            started = time.monotonic()
            firsts = []
            for k in range(int(command["count"])):
                client = Client(
                    f"{command.get('prefix', 'c')}{k}",
                    heads[k % len(heads)],
                    command["host"],
                    int(command["port"]),
                )
                first: asyncio.Future[None] = loop.create_future()
                clients.append(client)
                firsts.append(first)
                tasks.append(asyncio.create_task(client.run(first, gate)))
            await asyncio.gather(*firsts)
            reply({"opened": len(firsts), "seconds": round(time.monotonic() - started, 3)})
        elif command["cmd"] == "status":
            reply({"connected_ms": [client.connected_ms for client in clients]})
        elif command["cmd"] == "stop":
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for client in clients:
                client.stop()
            reply([record.as_json() for client in clients for record in client.records])
            return


def main() -> None:
    raise_nofile()
    run_fast(serve)


if __name__ == "__main__":
    main()
