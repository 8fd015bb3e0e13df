"""The run's users and their SSE clients, each recording every event it receives.

- steady clients: `timer=0` users, one stream each for the whole run, reconnecting when a stream
  ends; half of them resume with Last-Event-ID (their connections form one chain), half start
  afresh (each connection stands alone);
- a `timer>0` client, whose events are counted (no ledger: it gets the latest price, not each);
- churn: short `timer=0` connections opened and closed in bursts, each checked on its own;
- storms: concurrent subscribe/cancel of shared tickers by several users at once, the same
  cancel twice in parallel included.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from __tests__.sse import SSEParser
from bench.chaos.plan import PASSWORD_OF

RECONNECT_DELAY = 0.5  # what an EventSource waits is the server's retry; sooner is harsher
STREAM_PATH = "/api/v2/sse/connection"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Connection:
    """One SSE response: when it was open and what came through it, in order."""

    client: str
    replica: str
    chain: str  # connections of one chain are checked as one stream (Last-Event-ID resumes)
    last_event_id: str | None
    opened_ms: int = 0  # when `connected` arrived; 0 when it never did
    closed_ms: int = 0
    tickers: set[str] = field(default_factory=set)  # its timer=0 subscriptions at connect
    prices: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    gaps: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    events: int = 0
    ended_by: str = ""


class Api:
    """A signed-in user's HTTP calls."""

    def __init__(self, base_url: str, user: str) -> None:
        self.user = user
        self.client = httpx.AsyncClient(base_url=base_url, timeout=30)

    async def sign_in(self) -> str:
        body = {"user_id": self.user, "client_id": f"chaos-{self.user}"}
        body["client_secret"] = PASSWORD_OF + self.user
        for _ in range(60):  # a replica may be restarting: sign-in is setup, not a fault
            try:
                response = await self.client.post("/api/v1/sessions", json=body)
                if response.status_code == 201:
                    token = str(response.json()["token"])
                    self.client.headers["Authorization"] = f"Bearer {token}"
                    return token
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
        raise AssertionError(f"{self.user} could not sign in")

    async def subscribe(self, ticker: str, timer: int = 0) -> int:
        path = f"/api/v1/market/{self.user}/create_order/{ticker}?timer={timer}"
        return (await self.client.get(path)).status_code

    async def cancel(self, ticker: str) -> int:
        return (
            await self.client.get(f"/api/v1/market/{self.user}/cancel_order/{ticker}")
        ).status_code

    async def close(self) -> None:
        await self.client.aclose()


class Recorder:
    """Everything every client received, and the newest price seen per ticker (the monitor)."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.latest: dict[str, tuple[int, int]] = {}  # ticker -> (received ms, tick timestamp)
        self.timer_events: dict[str, int] = {}
        self.http_errors: list[str] = []

    def newest_after(self, ticker: str, after_ms: int) -> bool:
        seen = self.latest.get(ticker)
        return seen is not None and seen[1] > after_ms


async def stream_once(
    recorder: Recorder, connection: Connection, headers: dict[str, str], stop: asyncio.Event
) -> None:
    """Read one SSE response until it ends or `stop` is set; record what it carried."""
    recorder.connections.append(connection)
    parser = SSEParser()
    timeout = httpx.Timeout(10, read=30)  # pings come every 15 s: 30 s of silence is a dead stream
    async with httpx.AsyncClient(base_url=connection.replica, timeout=timeout) as client:
        try:
            async with client.stream("GET", STREAM_PATH, headers=headers) as response:
                if response.status_code != 200:
                    connection.ended_by = f"status {response.status_code}"
                    return
                reading = asyncio.ensure_future(_read(recorder, connection, parser, response))
                stopping = asyncio.ensure_future(stop.wait())
                try:
                    done, _ = await asyncio.wait({reading, stopping}, return_when="FIRST_COMPLETED")
                finally:  # cancelled from outside too: the reader must not outlive its stream
                    for task in (reading, stopping):
                        task.cancel()
                    await asyncio.gather(reading, stopping, return_exceptions=True)
                if reading in done and reading.exception() is not None:
                    connection.ended_by = type(reading.exception()).__name__
                else:
                    connection.ended_by = connection.ended_by or "client"
        except (httpx.TransportError, httpx.StreamError) as error:
            connection.ended_by = type(error).__name__
        finally:
            connection.closed_ms = now_ms()


async def _read(
    recorder: Recorder, connection: Connection, parser: SSEParser, response: httpx.Response
) -> None:
    async for text in response.aiter_text():
        for event in parser.feed(text):
            connection.events += 1
            data: Any = event.data
            if event.event == "connected":
                connection.opened_ms = now_ms()
                connection.tickers = {
                    s["ticker"] for s in data["subscriptions"] if s.get("timer") == 0
                }
            elif event.event == "price":
                ticker, ts = str(data["ticker"]), int(data["timestamp"])
                connection.prices.setdefault(ticker, []).append((ts, float(data["price"])))
                connection.last_event_id = event.id
                if connection.tickers:
                    recorder.latest[ticker] = (
                        now_ms(),
                        max(ts, recorder.latest.get(ticker, (0, 0))[1]),
                    )
                else:
                    recorder.timer_events[ticker] = recorder.timer_events.get(ticker, 0) + 1
            elif event.event == "gap":
                span = (int(data["from"]), int(data["to"]))
                connection.gaps.setdefault(str(data["ticker"]), []).append(span)
    connection.ended_by = "server ended the stream"


async def steady_client(
    recorder: Recorder,
    *,
    name: str,
    replicas: list[str],
    token: str,
    resume: bool,
    stop: asyncio.Event,
    gates: dict[str, asyncio.Event],
    timer_query: str = "",
) -> None:
    """One user's stream for the whole run: reconnect (to the next replica) whenever it ends."""
    attempt = 0
    last_id: str | None = None
    while not stop.is_set():
        replica = replicas[attempt % len(replicas)]
        attempt += 1
        await gates[replica].wait()  # a restarting replica: its baseline is read first
        headers = {"Authorization": f"Bearer {token}"}
        if resume and last_id:
            headers["Last-Event-ID"] = last_id
        chain = name if resume else f"{name}#{attempt}"
        connection = Connection(name, replica, chain, last_id)
        await stream_once(recorder, connection, headers, stop)
        last_id = connection.last_event_id or last_id
        if not stop.is_set():
            await asyncio.sleep(RECONNECT_DELAY)


async def churn(
    recorder: Recorder,
    rng: random.Random,
    replicas: list[str],
    tokens: dict[str, str],
    count: int,
) -> None:
    """`count` short timer=0 connections at once, each held 1-4 s, each checked on its own."""

    async def one(i: int, hold: float, user: str, replica: str) -> None:
        stop = asyncio.Event()
        connection = Connection(f"churn-{user}", replica, f"churn-{now_ms()}-{i}", None)
        task = asyncio.ensure_future(
            stream_once(recorder, connection, {"Authorization": f"Bearer {tokens[user]}"}, stop)
        )
        await asyncio.sleep(hold)  # the hold time is the point of churn
        stop.set()
        await task

    users = sorted(tokens)
    plans = [(rng.uniform(1, 4), rng.choice(users), rng.choice(replicas)) for _ in range(count)]
    await asyncio.gather(*(one(i, *plan) for i, plan in enumerate(plans)))


async def storm(
    recorder: Recorder, rng: random.Random, apis: list[Api], tickers: list[str], rounds: int
) -> list[str]:
    """Rounds of concurrent subscribe/cancel across users sharing tickers; a log of outcomes."""
    outcomes: list[str] = []
    for _ in range(rounds):
        picks = rng.sample(tickers, k=min(3, len(tickers)))
        calls = []
        for api in apis:
            for ticker in picks:
                calls.append(api.subscribe(ticker, timer=rng.choice((0, 1))))
                # The same cancel twice at once: the race that corrupted the reference count.
                calls.extend(api.cancel(ticker) for _ in range(rng.choice((0, 1, 2))))
        rng.shuffle(calls)
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException) or r >= 500]
        outcomes.append(f"{len(calls)} calls, {len(errors)} failed")
        recorder.http_errors.extend(repr(e) for e in errors)
    return outcomes
