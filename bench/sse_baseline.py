"""The baseline of the SSE benchmark: a minimal price broadcaster written with sse-starlette.

What a typical FastAPI user writes: one upstream subscription, one `asyncio.Queue` per client, a
generator per client that yields `{"event", "id", "data"}` dicts to `EventSourceResponse`. The
JSON of a tick is built once and the same dict goes into every queue; sse-starlette encodes it per
client (that is the library's way). No auth, no database, no subscriptions: only the fan-out.

    python -m bench.sse_baseline --port 8100 --deribit-url ws://127.0.0.1:8765/ws/api/v2
    GET /sse  ->  event: price / id: btc_usd:<ms> / data: {"ticker", "price", "timestamp", ...}

`--ticker BTC-PERPETUAL` forwards an instrument's `100ms` channel instead: the mark as `price`,
and the frame's other fields beside it, as the product's event carries them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from sse_starlette import EventSourceResponse

from cryptomarket.deribit.connection import DeribitConnection
from cryptomarket.deribit.credits import CreditBudget
from cryptomarket.instruments.names import is_instrument
from cryptomarket.prices.kinds import channel_of

NOT_FIELDS = frozenset({"instrument_name", "timestamp", "mark_price"})


def create_app(deribit_url: str, ticker: str, heartbeat: float) -> FastAPI:
    clients: set[asyncio.Queue[dict[str, Any]]] = set()
    channel_wanted = channel_of(ticker)
    instrument = is_instrument(ticker)

    def on_tick(channel: str, data: Any) -> None:
        if channel != channel_wanted or not isinstance(data, dict):
            return
        timestamp = int(data["timestamp"])
        moment = datetime.fromtimestamp(timestamp / 1000, UTC)
        event = {
            "ticker": ticker,
            "price": data["mark_price" if instrument else "price"],
            "timestamp": timestamp,
            "datetime": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if instrument:
            event.update((k, v) for k, v in data.items() if k not in NOT_FIELDS)
        message = {"event": "price", "id": f"{ticker}:{timestamp}", "data": json.dumps(event)}
        for queue in clients:
            queue.put_nowait(message)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstream = DeribitConnection(
            deribit_url, budget=CreditBudget(), heartbeat_interval=heartbeat, name="baseline"
        )
        upstream.on_notification(on_tick)
        await upstream.subscribe([channel_wanted])
        upstream.start()
        try:
            yield
        finally:
            await upstream.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/sse")
    async def sse(request: Request) -> EventSourceResponse:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        clients.add(queue)

        async def events() -> AsyncIterator[dict[str, Any]]:
            try:
                while True:
                    yield await queue.get()
            finally:
                clients.discard(queue)

        return EventSourceResponse(events())

    @app.get("/clients")
    async def count() -> dict[str, int]:
        return {"clients": len(clients)}

    return app


def main() -> None:
    from bench.sse_common import broadcaster_args  # noqa: PLC0415  # run as a script too

    args = broadcaster_args(__doc__.splitlines()[0])
    # The same server settings as `cryptomarket serve`: uvicorn's defaults (uvloop, httptools).
    uvicorn.run(
        create_app(args.deribit_url, args.ticker, args.heartbeat),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
