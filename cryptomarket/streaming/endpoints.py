"""`/api/v2/sse/connection`: the user's live price stream (SPEC section 5)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from cryptomarket.core.errors import ErrorBody
from cryptomarket.core.routing import get_and_post
from cryptomarket.prices.models import Tick
from cryptomarket.prices.repository import PriceRepository
from cryptomarket.runtime import Runtime, RuntimeDep
from cryptomarket.streaming import events
from cryptomarket.streaming.hub import Stream
from cryptomarket.subscriptions.schemas import MAX_TIMER
from cryptomarket.users.auth import StreamCallerDep

router = APIRouter(tags=["stream"])

REPLAY_LIMIT = 1_000  # ticks per ticker a reconnecting client may catch up on
STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
}


@get_and_post(
    router,
    "/api/v2/sse/connection",
    summary="Open your live price stream (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Events: connected, price, status, gap; `: ping` comments when idle.",
        },
        401: {"model": ErrorBody, "description": "No credentials, or wrong ones."},
        429: {"model": ErrorBody, "description": "Too many open streams for this user."},
        503: {"model": ErrorBody, "description": "This server holds its maximum of streams."},
    },
)
async def sse_connection(
    caller: StreamCallerDep,
    runtime: RuntimeDep,
    timer: Annotated[
        int | None,
        Query(ge=0, le=MAX_TIMER, description="Default seconds between prices (0: every tick)."),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=100, description="Resume after this event."),
    ] = None,
) -> StreamingResponse:
    """Subscriptions come from create_order; changes reach the open stream at once."""
    hub = runtime.hub
    # Registered before the subscriptions are read: a change made meanwhile reaches this
    # stream through the hub, and is applied after (overriding) the stored state read here.
    stream = hub.open(caller.user_id, timer)
    try:
        subscriptions = await runtime.subscriptions.subscriptions(caller.user_id)
        await runtime.subscriptions.load_latest(list(subscriptions))
        replay = await _replay(runtime, stream, subscriptions, last_event_id)
        changed_meanwhile = dict(stream.timers)
        for ticker, own_timer in subscriptions.items():
            if ticker not in changed_meanwhile:
                hub.subscribe(stream, ticker, own_timer)
    except BaseException:
        hub.close(stream)
        raise
    connected = events.frame(
        "connected",
        {
            "user_id": caller.user_id,
            "token": stream.id,
            "timer": stream.default_timer,
            "subscriptions": [
                {"ticker": ticker, "timer": seconds} for ticker, seconds in stream.timers.items()
            ],
        },
    )

    async def body() -> AsyncIterator[bytes]:
        stream.writer = asyncio.current_task()
        try:
            yield events.retry() + connected + b"".join(replay) + hub.upstream
            async for chunk in stream.chunks(hub.ping_interval):
                yield chunk
        finally:
            hub.close(stream)

    return StreamingResponse(body(), media_type="text/event-stream", headers=STREAM_HEADERS)


async def _replay(
    runtime: Runtime,
    stream: Stream,
    subscriptions: dict[str, int | None],
    last_event_id: str | None,
) -> list[bytes]:
    """The ticks a reconnecting client missed, for its every-tick subscriptions, in order."""
    resume = events.parse_last_event_id(last_event_id)
    if resume is None:
        return []
    resumed_ticker, since = resume
    if resumed_ticker in subscriptions:
        stream.last_sent[resumed_ticker] = since
    every_tick = [
        ticker
        for ticker, own in subscriptions.items()
        if (stream.default_timer if own is None else own) == 0
    ]
    # The store has the older ticks; the hub's recent ones cover what is not written yet.
    missed: dict[tuple[str, int], Tick] = {}
    database = runtime.database
    async with database.reading() as connection:
        repository = PriceRepository(connection, database.tables)
        for ticker in every_tick:
            rows = await repository.newest_after(ticker, since, limit=REPLAY_LIMIT)
            for row in rows:
                missed[ticker, row.timestamp] = Tick(row.ticker, row.price, row.timestamp)
            for tick in runtime.hub.recent.get(ticker, ()):
                if tick.timestamp > since:
                    missed[ticker, tick.timestamp] = tick
    ordered = sorted(missed.values(), key=lambda tick: (tick.timestamp, tick.ticker))
    ordered = ordered[-REPLAY_LIMIT * max(1, len(every_tick)) :]
    for tick in ordered:
        stream.last_sent[tick.ticker] = max(tick.timestamp, stream.last_sent.get(tick.ticker, 0))
    return [events.price_frame(tick) for tick in ordered]
