"""Price history routes (SPEC section 4). Public: no session needed."""

from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from cryptomarket.core.errors import Unavailable
from cryptomarket.core.openapi_docs import (
    INDEX_LIST_DOWN,
    INVALID,
    INVALID_DATE,
    NO_PRICES,
    UNKNOWN_TICKER,
    Responses,
    error,
)
from cryptomarket.kit.csv import csv_download, csv_response, wants_csv
from cryptomarket.kit.json import json_page
from cryptomarket.prices import export
from cryptomarket.prices.candles import RESOLUTION_HELP
from cryptomarket.prices.schemas import CandleRange, PricePage, PricePoint, PriceRange, TickerList
from cryptomarket.prices.service import DEFAULT_LIMIT, MAX_LIMIT
from cryptomarket.prices.tickers import CatalogueUnavailable
from cryptomarket.runtime import PriceServiceDep, within_history_limit

router = APIRouter(prefix="/api/v1", tags=["prices"], dependencies=[Depends(within_history_limit)])

Ticker = Annotated[
    str,
    Query(
        min_length=1,
        max_length=64,
        description="Deribit index name (/api/v1/tickers) or instrument name "
        "(/api/v1/instruments).",
        examples=["btc_usd"],
    ),
]
Limit = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"Rows per page (at most {MAX_LIMIT}).")
]
Cursor = Annotated[
    str | None,
    Query(max_length=32, description="`next_cursor` of the previous page."),
]
DATE_HELP = "YYYY-MM-DD_HH:MM:SS or ISO 8601; without an offset it is UTC."
StartDate = Annotated[
    str, Query(max_length=64, description=DATE_HELP, examples=["2025-11-24_09:00:00"])
]
EndDate = Annotated[
    str | None,
    Query(
        max_length=64, description=DATE_HELP + " Default: now.", examples=["2025-11-24T10:00:00Z"]
    ),
]

Format = Annotated[
    Literal["json", "csv"] | None,
    Query(
        description="`csv`: the whole range as a `text/csv` download, without pages (so does "
        "an `Accept: text/csv` header)."
    ),
]
CSV_DOWNLOAD = {"content": {"text/csv": {"schema": {"type": "string"}}}}

ERRORS: Responses = {404: UNKNOWN_TICKER, 422: INVALID, 503: INDEX_LIST_DOWN}


@router.get("/prices", response_model=PricePage, responses=ERRORS, summary="Stored prices")
async def prices(
    service: PriceServiceDep,
    *,
    ticker: Ticker,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> Response:
    """Stored prices of a ticker, newest first, `limit` at a time. A full page carries
    `next_cursor`: pass it as `cursor` for the next, older page; the last page has null."""
    page = await service.newest_first(ticker, limit=limit, cursor=cursor)
    return await json_page(page, len(page.items))


@router.get(
    "/prices/latest",
    response_model=PricePoint,
    responses={**ERRORS, 404: NO_PRICES},
    summary="The latest price",
)
async def latest_price(service: PriceServiceDep, ticker: Ticker) -> PricePoint:
    """The newest stored price of a ticker; 404 when none is stored yet."""
    return await service.latest(ticker)


@router.get(
    "/prices/by-date",
    response_model=PriceRange,
    responses={200: CSV_DOWNLOAD, **ERRORS, 422: INVALID_DATE},
    summary="Prices in a range",
)
async def prices_by_date(
    service: PriceServiceDep,
    request: Request,
    *,
    ticker: Ticker,
    start_date: StartDate,
    end_date: EndDate = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    format: Format = None,
) -> Response:
    """Prices between `start_date` and `end_date` (default: now), by Deribit's timestamp,
    oldest first, `limit` at a time; pass `next_cursor` as `cursor`, with the same dates, for
    the next page. `start_date` after `end_date` is 422. As CSV (`format=csv`), the whole
    range in one download: `ticker,timestamp,datetime,price`."""
    if wants_csv(request, format):
        start, end = await service.checked_range(ticker, start_date, end_date)
        return csv_download(
            export.tick_csv(service.database, ticker, start, end),
            filename=f"{ticker}_{start}_{end}.csv",
        )
    page = await service.between(
        ticker, start_date=start_date, end_date=end_date, limit=limit, cursor=cursor
    )
    return await json_page(page, len(page.items))


@router.get(
    "/prices/candles",
    response_model=CandleRange,
    responses={200: CSV_DOWNLOAD, **ERRORS, 422: INVALID_DATE},
    summary="Candles in a range",
)
async def candles(
    service: PriceServiceDep,
    request: Request,
    *,
    ticker: Ticker,
    resolution: Annotated[
        str,
        Query(
            max_length=8,
            description=f"Minutes per candle, one of Deribit's: {RESOLUTION_HELP} (1D: a day).",
            examples=["1", "60", "1D"],
        ),
    ],
    start_date: StartDate,
    end_date: EndDate = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    format: Format = None,
) -> CandleRange | Response:
    """Open, high, low and close of the stored prices in UTC buckets of `resolution`, for the
    buckets that overlap `start_date`..`end_date` (default: now), oldest first, `limit` at a
    time (pass `next_cursor` as `cursor`, with the same parameters, for the next page). A bucket
    without ticks has no candle; a candle a recorded gap overlaps says `gap: true`. As CSV
    (`format=csv`), every candle of the range in one download:
    `start,datetime,open,high,low,close,count,gap`."""
    read = partial(
        service.candles, ticker, resolution=resolution, start_date=start_date, end_date=end_date
    )
    if wants_csv(request, format):
        first = await read(limit=MAX_LIMIT, cursor=cursor)  # checks the input before the 200
        return csv_response(
            export.CANDLE_HEADER,
            export.candle_rows(first, lambda after: read(limit=MAX_LIMIT, cursor=after)),
            filename=f"{ticker}_{first.resolution}_{first.start_date:%Y%m%dT%H%M%S}.csv",
        )
    return await read(limit=limit, cursor=cursor)


@router.get(
    "/tickers",
    response_model=TickerList,
    responses={
        503: error(
            "Deribit's index list cannot be reached and none is cached.",
            "unavailable",
            "Deribit's list of index names could not be fetched",
        )
    },
    summary="Supported index names",
)
async def tickers(service: PriceServiceDep) -> TickerList:
    """Index names Deribit supports, from `public/get_index_price_names`, cached for an hour.
    Every ticker parameter of this API is checked against this list."""
    try:
        return TickerList(tickers=await service.catalogue.names())
    except CatalogueUnavailable as error:
        raise Unavailable(str(error)) from None
