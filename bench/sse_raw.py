"""The floor of the SSE benchmark: no framework at all, a raw asyncio protocol on uvloop.

One upstream subscription; each tick's event is encoded once and written with `transport.write`
to every connection, in the loop that received it. No flow control, no slow-reader rule, no auth:
what fan-out costs on this machine before any server does anything else.

    python -m bench.sse_raw --port 8101 --deribit-url ws://127.0.0.1:8765/ws/api/v2 [--ticker T]
    any GET  ->  200, text/event-stream, `event: price` frames as bench/sse_baseline.py sends them
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any, cast

import uvloop

from bench.sse_baseline import NOT_FIELDS
from cryptomarket.deribit.connection import DeribitConnection
from cryptomarket.deribit.credits import CreditBudget
from cryptomarket.instruments.names import is_instrument
from cryptomarket.prices.kinds import channel_of

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\n\r\nretry: 3000\n\n"
)


class Broadcast:
    def __init__(self, ticker: str) -> None:
        self.ticker = ticker
        self.channel = channel_of(ticker)
        self.instrument = is_instrument(ticker)
        self.clients: set[asyncio.Transport] = set()

    def on_tick(self, channel: str, data: Any) -> None:
        if channel != self.channel or not isinstance(data, dict):
            return
        timestamp = int(data["timestamp"])
        moment = datetime.fromtimestamp(timestamp / 1000, UTC)
        event = {
            "ticker": self.ticker,
            "price": data["mark_price" if self.instrument else "price"],
            "timestamp": timestamp,
            "datetime": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if self.instrument:
            event.update((k, v) for k, v in data.items() if k not in NOT_FIELDS)
        frame = (
            f"event: price\nid: {self.ticker}:{timestamp}\ndata: {json.dumps(event)}\n\n"
        ).encode()
        for transport in self.clients:
            transport.write(frame)


class Client(asyncio.Protocol):
    def __init__(self, broadcast: Broadcast) -> None:
        self.broadcast = broadcast
        self.transport: asyncio.Transport | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport in self.broadcast.clients:
            return  # a streaming client sends nothing more that matters
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.transport.write(HEAD)
            self.broadcast.clients.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.broadcast.clients.discard(self.transport)


async def serve(host: str, port: int, deribit_url: str, ticker: str, heartbeat: float) -> None:
    broadcast = Broadcast(ticker)
    upstream = DeribitConnection(
        deribit_url, budget=CreditBudget(), heartbeat_interval=heartbeat, name="raw"
    )
    upstream.on_notification(broadcast.on_tick)
    await upstream.subscribe([broadcast.channel])
    upstream.start()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(broadcast), host, port, backlog=4096)
    try:
        await server.serve_forever()
    finally:
        await upstream.close()


def main() -> None:
    from bench.sse_common import broadcaster_args  # noqa: PLC0415  # run as a script too

    args = broadcaster_args(__doc__.splitlines()[0])
    uvloop.run(serve(args.host, args.port, args.deribit_url, args.ticker, args.heartbeat))


if __name__ == "__main__":
    main()
