"""`/api/v2/sse/connection`: the user's live price stream (SPEC section 5).

A stream lives for hours and there may be ten thousand of them, so the route is served by a plain
ASGI app (`ServeEventStream`) that app.py puts in front of FastAPI: the request machinery of the
framework (middleware chain, dependency solving, exit stacks) would otherwise stay alive beside
every open stream for its whole life, and every event would pass through its wrappers. `router`
declares the same route, with the same parameters, for /docs and /redoc.
"""

import logging
import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cryptomarket.core.errors import (
    AppError,
    InvalidInput,
    NotAuthenticated,
    TooMany,
    app_error_response,
    error_response,
)
from cryptomarket.core.logging import REQUEST_ID
from cryptomarket.core.openapi_docs import SSE_ROUTE_DOCS
from cryptomarket.core.request_id import id_header, take_request_id
from cryptomarket.core.routing import get_and_post
from cryptomarket.core.security_headers import secure_start
from cryptomarket.kit.addresses import address_key
from cryptomarket.kit.tarpit import Tarpit
from cryptomarket.prices.models import Gap
from cryptomarket.runtime import Runtime, RuntimeDep
from cryptomarket.streaming import events
from cryptomarket.streaming.hub import StreamHub
from cryptomarket.streaming.replay import Missed
from cryptomarket.streaming.replay import frames as replay_frames
from cryptomarket.streaming.response import (
    STREAM_RAW_HEADERS,
    EventStreamResponse,
    connection_of,
    write_events,
)
from cryptomarket.streaming.stream import Stream
from cryptomarket.subscriptions.schemas import MAX_TIMER
from cryptomarket.users.auth import Caller, StreamCallerDep, identify, presented_by
from cryptomarket.users.service import token_hash

PATH = "/api/v2/sse/connection"
MAX_TOKEN = 256
MAX_EVENT_ID = 100

logger = logging.getLogger("cryptomarket.streaming")

router = APIRouter(tags=["stream"])


@get_and_post(router, PATH, **SSE_ROUTE_DOCS)
async def sse_connection(
    caller: StreamCallerDep,
    runtime: RuntimeDep,
    timer: Annotated[
        int | None,
        Query(ge=0, le=MAX_TIMER, description="Default seconds between prices (0: every tick)."),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID", max_length=MAX_EVENT_ID, description="Resume after this event."
        ),
    ] = None,
) -> EventStreamResponse:
    """Subscriptions come from create_order; changes reach the open stream at once."""
    return EventStreamResponse(
        runtime.hub, *await open_event_stream(runtime, caller, timer, last_event_id)
    )


class ServeEventStream:
    """The served route: parameters and credentials checked as `sse_connection` declares.

    Its stream's response start carries the security headers and the request id the app's
    middleware would add (each middleware layer would otherwise stay alive beside the stream);
    an error answer goes out through that middleware (`answer_errors`), as every other route's.
    """

    def __init__(
        self,
        answer_errors: Callable[[ASGIApp], ASGIApp] = lambda app: app,
        tarpit: Tarpit | None = None,
    ) -> None:
        self.answer_error = answer_errors(_send_failure)
        self.tarpit = tarpit  # where a 429 waits for a client back before its Retry-After

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = take_request_id(scope)
        REQUEST_ID.set(request_id)  # this task serves this one request: its log lines carry it
        try:
            prepared = await _prepare(Request(scope))
        except AppError as error:
            if self.tarpit is not None and isinstance(error, TooMany):
                client = scope.get("client") or ("unknown", 0)
                await self.tarpit.refuse(address_key(client[0]), error.retry_after)
            scope[FAILURE] = app_error_response(error)
        except Exception:
            logger.exception("unhandled error opening a stream")
            scope[FAILURE] = error_response(
                500, "Something went wrong on our side.", "internal_error"
            )
        else:
            # For hours this frame waits on the writing: it holds no reference to the opening
            # or the response start, which the writer lets go of once they are sent.
            writing = _writing(prepared, request_id, scope, receive, send)
            del prepared
            await writing
            return
        await self.answer_error(scope, receive, send)


def _writing(
    prepared: tuple[Runtime, Stream, bytes],
    request_id: str,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> Coroutine[None, None, None]:
    runtime, stream, opening = prepared
    headers = [*STREAM_RAW_HEADERS, id_header(request_id)]
    start = secure_start({"type": "http.response.start", "status": 200, "headers": headers}, scope)
    return write_events(
        runtime.hub,
        stream,
        opening,
        start,
        receive=receive,
        send=send,
        connection=connection_of(scope, send),
    )


FAILURE = "cryptomarket.failure"


async def _send_failure(scope: Scope, receive: Receive, send: Send) -> None:
    failure: Response = scope.pop(FAILURE)
    await failure(scope, receive, send)


def is_stream_request(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["path"] == PATH and scope["method"] in ("GET", "POST")


async def _prepare(request: Request) -> tuple[Runtime, Stream, bytes]:
    runtime: Runtime = request.app.state.runtime
    query = request.query_params
    timer = _timer(query.get("timer"))
    token = _bounded("token", query.get("token"), MAX_TOKEN)
    last_event_id = _bounded("Last-Event-ID", request.headers.get("last-event-id"), MAX_EVENT_ID)
    address = request.client.host if request.client else "unknown"
    caller = await identify(runtime, presented_by(request), token, sign_in_from=address)
    return (runtime, *await open_event_stream(runtime, caller, timer, last_event_id))


def _timer(value: str | None) -> int | None:
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,6}", value) or int(value) > MAX_TIMER:
        raise InvalidInput(f"timer: must be a whole number of seconds from 0 to {MAX_TIMER}")
    return int(value)


def _bounded(name: str, value: str | None, limit: int) -> str | None:
    if value is not None and len(value) > limit:
        raise InvalidInput(f"{name}: must be at most {limit} characters")
    return value


async def open_event_stream(
    runtime: Runtime, caller: Caller, timer: int | None, last_event_id: str | None
) -> tuple[Stream, bytes]:
    """Register the caller's stream, set up from its stored subscriptions; with what goes out
    first on it (retry, connected, the replay, the upstream status)."""
    await runtime.stream_opens.admit(caller.user_id)
    hub = runtime.hub
    # No await from here to the registration: a sign-out that ended the session's streams while
    # this one was opening (its session read as valid just before) is remembered, and refused.
    if caller.token is not None and token_hash(caller.token) in hub.signed_out:
        raise NotAuthenticated("this session was signed out; sign in again")
    # Registered before the subscriptions are read: a change made meanwhile (a subscribe or a
    # cancel) reaches this stream through the hub, and wins over the stored state read here.
    stream = hub.open(
        caller.user_id,
        timer,
        caller.token,
        caller.client_id,
        account_id=caller.account_id,
        settle_later=True,
    )
    try:
        subscriptions = await runtime.subscriptions.subscriptions(caller.user_id)
        await runtime.subscriptions.load_latest(list(subscriptions))
        missed = await _missed(runtime, stream, subscriptions, last_event_id)
        # From here on no await: the hub's recent ticks and the live ones meet without overlap.
        timers = hub.settle(stream, subscriptions)
        replay = []
        if missed is not None:  # those no longer every-tick (changed meanwhile) are not replayed
            changed = [ticker for ticker in missed.tickers if timers.get(ticker) != 0]
            replay = replay_frames(hub, stream, missed, changed)
        # Latest prices go out in publish order: a client resuming from the last one it got
        # had every other one before it (streaming/replay.py).
        # Gaps after the price each every-tick ticker starts from (its latest): a stream's
        # series is whole from its first price on, or says where it is not. A resumed one's
        # goes back to where it stopped: a gap published meanwhile may not be stored yet.
        starts = {ticker: _latest_ms(hub, ticker) for ticker in timers}
        told: set[Gap] = set()
        if missed is not None:
            starts.update((ticker, missed.gaps_since(ticker)) for ticker in missed.tickers)
            told.update(missed.recorded_gaps)
        for ticker in sorted(timers, key=lambda ticker: _published(hub, ticker)):
            hub.subscribe(stream, ticker, timers[ticker])
        replay += [
            events.gap_frame(gap)
            for gap in hub.recent_gaps
            if stream.timers.get(gap.ticker) == 0
            and gap.to_ts > starts.get(gap.ticker, 0)
            and gap not in told
        ]
    except BaseException:
        hub.close(stream)
        raise
    connected = events.frame(
        "connected",
        {
            "user_id": caller.user_id,
            # The new session's token when this stream signed in (key headers the service did
            # not know), for the other routes; never an existing one (the cookie is HttpOnly).
            "token": caller.token if caller.new else None,
            "stream": stream.id,
            "timer": stream.default_timer,
            "subscriptions": [  # in the stored order, then those subscribed meanwhile
                {"ticker": ticker, "timer": stream.timers[ticker]}
                for ticker in timers
                if ticker in stream.timers  # not one that expired meanwhile
            ],
        },
    )
    opening = events.retry() + connected + b"".join(replay) + hub.upstream
    hub.events_sent += len(replay) + 2
    return stream, opening


def _latest_ms(hub: StreamHub, ticker: str) -> int:
    latest = hub.latest.get(ticker)
    return latest[0].timestamp if latest is not None else 0


def _published(hub: StreamHub, ticker: str) -> datetime:
    latest = hub.latest.get(ticker)
    return latest[0].received_at if latest is not None else NEVER


NEVER = datetime.min.replace(tzinfo=UTC)


async def _missed(
    runtime: Runtime,
    stream: Stream,
    subscriptions: dict[str, int | None],
    last_event_id: str | None,
) -> Missed | None:
    """What the store holds of the ticks a reconnecting client missed (streaming/replay.py)."""
    resume = events.parse_last_event_id(last_event_id)
    if resume is None:
        return None
    resumed_ticker, since = resume
    if resumed_ticker in subscriptions:
        stream.last_sent[resumed_ticker] = since
    every_tick = [
        ticker
        for ticker, own in subscriptions.items()
        if (stream.default_timer if own is None else own) == 0
    ]
    return await runtime.replays.missed(every_tick, resume)
