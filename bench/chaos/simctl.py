"""The harness's own socket to the simulator: `sim/*` control calls and the ground truth.

One JSON-RPC connection, answers matched by id. A control call acts on every other connection,
so this one is never dropped, silenced or refused by the faults it injects (a refusal only
refuses new connections; this one is opened first and reopened only if it is lost).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from cryptomarket.instruments.names import is_instrument

CALL_TIMEOUT = 30.0
PRODUCED_SPAN_MS = 60_000  # ground truth is fetched a minute at a time: frames stay small


class SimControl:
    def __init__(self, url: str) -> None:
        self.url = url
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()  # one call at a time: answers are read in turn

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        async with self._lock:
            for attempt in range(2):
                try:
                    return await asyncio.wait_for(self._call(method, params), CALL_TIMEOUT)
                except (ConnectionClosed, OSError):
                    self._ws = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")

    async def _call(self, method: str, params: dict[str, Any] | None) -> Any:
        if self._ws is None:
            self._ws = await connect(self.url, max_size=None, open_timeout=10)
        request_id = next(self._ids)
        frame = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        await self._ws.send(json.dumps(frame))
        while True:
            answer = json.loads(await self._ws.recv())
            if answer.get("id") != request_id:
                continue  # a notification or a late answer: not ours
            if "error" in answer:
                raise RuntimeError(f"{method} failed: {answer['error']}")
            return answer["result"]

    async def produced(self, ticker: str, since: int, until: int) -> list[tuple[int, float]]:
        """Every tick the simulator produced for the index in (since, until], oldest first (for an
        instrument: every frame of its `100ms` channel, with its mark price).

        Raises when the simulator has already forgotten part of the span: a ledger on partial
        ground truth would call real losses fine.
        """
        ticks: list[tuple[int, float]] = []
        start = since
        while start < until:
            end = min(until, start + PRODUCED_SPAN_MS)
            name = "instrument_name" if is_instrument(ticker) else "index_name"
            answer = await self.call("sim/produced", {name: ticker, "since": start, "until": end})
            if not answer["complete"]:
                raise RuntimeError(f"sim/produced: {ticker} ({start}, {end}] is incomplete")
            ticks.extend((int(ts), float(price)) for ts, price in answer["ticks"])
            start = end
        return ticks

    async def channels(self) -> list[list[str]]:
        """Each other open connection's subscribed channels (empty lists left out)."""
        answer = await self.call("sim/subscriptions")
        return [list(c["channels"]) for c in answer if c["channels"]]
