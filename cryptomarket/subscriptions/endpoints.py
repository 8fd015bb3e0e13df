"""The seed's market routes (SPEC section 4), each answering GET and POST with JSON.

Every route needs the user's own session (or key headers): the router checks it before any of them.
"""

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Response, status

from cryptomarket.core.openapi_docs import (
    INDEX_LIST_DOWN,
    INVALID_DATE,
    OWNER_ERRORS,
    UNKNOWN_TICKER,
    error,
)
from cryptomarket.core.routing import get_and_post
from cryptomarket.kit.json import json_page
from cryptomarket.prices.endpoints import Cursor, EndDate, Limit, StartDate
from cryptomarket.prices.schemas import PriceRange
from cryptomarket.prices.service import DEFAULT_LIMIT
from cryptomarket.runtime import RuntimeDep, within_history_limit
from cryptomarket.subscriptions.schemas import MAX_TIMER, Created, Removed, TimerBody
from cryptomarket.users.auth import UserIdPath, require_owner

router = APIRouter(
    prefix="/api/v1/market/{user_id}",
    tags=["market"],
    dependencies=[Depends(require_owner)],
    responses=OWNER_ERRORS,
)

ALREADY_SUBSCRIBED = {"user_id": "alice", "ticker": "btc_usd", "timer": 0, "created": False}

TickerPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        description="Deribit index name (btc_usd) or instrument name (BTC-PERPETUAL).",
        examples=["btc_usd"],
    ),
]
Timer = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_TIMER,
        description="Seconds between prices; 0 for every tick. Default: the stream's ?timer=.",
    ),
]


@get_and_post(
    router,
    "/create_order/{ticker}",
    response_model=Created,
    status_code=status.HTTP_201_CREATED,
    summary="Subscribe to a ticker",
    responses={
        200: {
            "model": Created,
            "description": "Already subscribed (the timer is updated when one is given).",
            "content": {"application/json": {"example": ALREADY_SUBSCRIBED}},
        },
        404: UNKNOWN_TICKER,
        429: error(
            "The user subscribes MAX_SUBSCRIPTIONS_PER_USER tickers already.",
            "too_many_subscriptions",
            "user 'alice' already subscribes 100 tickers, the most allowed "
            "(MAX_SUBSCRIPTIONS_PER_USER=100); cancel one first",
        ),
        503: INDEX_LIST_DOWN,
    },
)
async def create_order(
    *,
    user_id: UserIdPath,
    ticker: TickerPath,
    response: Response,
    runtime: RuntimeDep,
    timer: Timer = None,
    body: Annotated[TimerBody | None, Body()] = None,
) -> Created:
    """Subscribe the user to a ticker: 201 when new, 200 when already subscribed.

    `timer` (query, or `{"timer": N}` as the POST body) sets the seconds between this ticker's
    prices on the user's streams; 0 is every tick; without one the stream's `?timer=` applies
    (else 60). Open streams start sending the ticker at once, beginning with its latest price.
    """
    chosen = timer if timer is not None else (body.timer if body else None)
    created = await runtime.subscriptions.subscribe(user_id, ticker, chosen)
    if not created.created:
        response.status_code = status.HTTP_200_OK
    return created


@get_and_post(
    router,
    "/cancel_order/{ticker}",
    response_model=Removed,
    summary="Unsubscribe from a ticker",
    responses={
        404: error(
            "The user is not subscribed to that ticker.",
            "not_subscribed",
            "'alice' is not subscribed to eth_usd",
        )
    },
)
async def cancel_order(user_id: UserIdPath, ticker: TickerPath, runtime: RuntimeDep) -> Removed:
    """Unsubscribe the user from one ticker: 200 with it in `removed`, or 404 if it was not
    subscribed. Open streams stop sending it at once."""
    return await runtime.subscriptions.unsubscribe(user_id, [ticker])


@get_and_post(
    router,
    "/cancel_all_orders",
    response_model=Removed,
    summary="Unsubscribe from everything",
)
async def cancel_all_orders(user_id: UserIdPath, runtime: RuntimeDep) -> Removed:
    """Unsubscribe the user from every ticker: 200 with the list removed (empty when there
    was nothing). Open streams stay open, with no subscription left."""
    return await runtime.subscriptions.unsubscribe(user_id, None)


@get_and_post(
    router,
    "/get_order/{ticker}",
    dependencies=[Depends(within_history_limit)],  # the same pages as /api/v1/prices/by-date
    response_model=PriceRange,
    summary="A ticker's history in a date range",
    responses={404: UNKNOWN_TICKER, 422: INVALID_DATE, 503: INDEX_LIST_DOWN},
)
async def get_order(
    *,
    user_id: UserIdPath,
    ticker: TickerPath,
    runtime: RuntimeDep,
    start_date: StartDate,
    end_date: EndDate = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> Response:
    """Stored prices of the ticker between `start_date` and `end_date` (default: now), by
    Deribit's timestamp, oldest first. A full page carries `next_cursor`: pass it as `cursor`
    with the same dates for the next one. `start_date` after `end_date` is 422."""
    page = await runtime.prices.between(
        ticker, start_date=start_date, end_date=end_date, limit=limit, cursor=cursor
    )
    return await json_page(page, len(page.items))
