"""What the price API answers, with the examples shown in /docs."""

import datetime as dt
from typing import (
    Annotated,
    NotRequired,  # pydantic needs these before 3.12
)

from pydantic import BaseModel, ConfigDict, Field, with_config
from pydantic.config import JsonDict
from typing_extensions import TypedDict

POINT_EXAMPLE: JsonDict = {
    "ticker": "btc_usd",
    "price": 87012.53,
    "timestamp": 1764000000123,
    "datetime": "2025-11-24T16:00:00.123000Z",
}
NEXT_POINT_EXAMPLE: JsonDict = {
    "ticker": "btc_usd",
    "price": 87010.02,
    "timestamp": 1764000001123,
    "datetime": "2025-11-24T16:00:01.123000Z",
}


INSTRUMENT_POINT_EXAMPLE: JsonDict = {
    "ticker": "BTC-PERPETUAL",
    "price": 92281.78,
    "timestamp": 1765541474086,
    "datetime": "2025-12-12T12:11:14.086000Z",
    "state": "open",
    "mark_price": 92281.78,
    "index_price": 92263.55,
    "last_price": 92283.5,
    "best_bid_price": 92283.5,
    "best_ask_price": 92284.0,
    "best_bid_amount": 117660.0,
    "best_ask_amount": 186520.0,
    "open_interest": 1132329370.0,
    "min_price": 90897.5,
    "max_price": 93666.5,
    "settlement_price": 92464.66,
    "estimated_delivery_price": 92263.55,
    "current_funding": 0.0,
    "funding_8h": 0.00001742,
    "stats": {"high": 93612.0, "low": 89277.5, "price_change": 2.3275, "volume": 11897.28},
}
Number = float | None


class PricePoint(BaseModel):
    """An index price, or an instrument's ticker: its mark as `price`, and beside it the fields
    its kind has (see the rows of `/api/v1/prices`)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [POINT_EXAMPLE, INSTRUMENT_POINT_EXAMPLE]},
    )

    ticker: str = Field(description="Deribit index or instrument name.")
    price: float = Field(description="Index price; an instrument's mark price.")
    timestamp: int = Field(description="Deribit's timestamp of the tick, in milliseconds (UTC).")
    datetime: dt.datetime = Field(description="The same moment as an ISO 8601 UTC date.")


# A PricePoint inside a page: a plain dict, so a page of 10,000 is built and encoded without a
# model object each (about a tenth of the time).
@with_config(ConfigDict(json_schema_extra={"examples": [POINT_EXAMPLE, INSTRUMENT_POINT_EXAMPLE]}))
class PriceItem(TypedDict):
    """One stored price: an index price, or an instrument's ticker (its mark as `price`, with
    the fields its kind has: funding for a perpetual, greeks and volatilities for an option)."""

    ticker: Annotated[str, Field(description="Deribit index or instrument name.")]
    price: Annotated[float, Field(description="Index price; an instrument's mark price.")]
    timestamp: Annotated[
        int, Field(description="Deribit's timestamp of the tick, in milliseconds (UTC).")
    ]
    datetime: Annotated[dt.datetime, Field(description="The same moment as an ISO 8601 UTC date.")]
    # Instruments only, as Deribit sent them (reference §13.2); any may be null.
    state: NotRequired[Annotated[str | None, Field(description="Instrument: book state.")]]
    mark_price: NotRequired[Number]
    index_price: NotRequired[Number]
    last_price: NotRequired[Number]
    best_bid_price: NotRequired[Number]
    best_ask_price: NotRequired[Number]
    best_bid_amount: NotRequired[Number]
    best_ask_amount: NotRequired[Number]
    open_interest: NotRequired[Number]
    min_price: NotRequired[Number]
    max_price: NotRequired[Number]
    settlement_price: NotRequired[Number]
    estimated_delivery_price: NotRequired[
        Annotated[float | str | None, Field(description='A number, or "expired".')]
    ]
    delivery_price: NotRequired[Annotated[Number, Field(description="Once expired.")]]
    current_funding: NotRequired[Annotated[Number, Field(description="Perpetuals.")]]
    funding_8h: NotRequired[Annotated[Number, Field(description="Perpetuals.")]]
    interest_value: NotRequired[Annotated[Number, Field(description="Perpetuals.")]]
    underlying_price: NotRequired[Annotated[Number, Field(description="Options.")]]
    underlying_index: NotRequired[Annotated[str | None, Field(description="Options.")]]
    interest_rate: NotRequired[Annotated[Number, Field(description="Options.")]]
    bid_iv: NotRequired[Annotated[Number, Field(description="Options, percent.")]]
    ask_iv: NotRequired[Annotated[Number, Field(description="Options, percent.")]]
    mark_iv: NotRequired[Annotated[Number, Field(description="Options, percent.")]]
    greeks: NotRequired[
        Annotated[dict[str, Number], Field(description="Options: delta gamma vega theta rho.")]
    ]
    stats: NotRequired[
        Annotated[
            dict[str, Number],
            Field(
                description="24 h: volume, volume_usd, volume_notional, price_change, high, low."
            ),
        ]
    ]
    implied_bid: NotRequired[Annotated[Number, Field(description="Combos.")]]
    implied_ask: NotRequired[Annotated[Number, Field(description="Combos.")]]
    combo_state: NotRequired[Annotated[str | None, Field(description="Combos.")]]


class PricePage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "ticker": "btc_usd",
                "items": [NEXT_POINT_EXAMPLE, POINT_EXAMPLE],
                "limit": 2,
                "next_cursor": "1764000000123",
            }
        }
    )

    ticker: str
    items: list[PriceItem] = Field(description="Newest first.")
    limit: int
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


class PriceRange(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "ticker": "btc_usd",
                "start_date": "2025-11-24T16:00:00Z",
                "end_date": "2025-11-24T17:00:00Z",
                "items": [POINT_EXAMPLE, NEXT_POINT_EXAMPLE],
                "limit": 1000,
                "next_cursor": None,
            }
        }
    )

    ticker: str
    start_date: dt.datetime = Field(description="Start of the range (UTC, inclusive).")
    end_date: dt.datetime = Field(description="End of the range (UTC, inclusive).")
    items: list[PriceItem] = Field(description="Oldest first.")
    limit: int
    next_cursor: str | None = Field(
        description="Pass as `cursor` with the same dates for the next page; null on the last."
    )


class TickerList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"tickers": ["btc_usd", "eth_usd", "sol_usdc"]}}
    )

    tickers: list[str] = Field(description="Index names Deribit supports (cached for an hour).")


CANDLE_EXAMPLE: JsonDict = {
    "start": 1764000000000,
    "datetime": "2025-11-24T16:00:00Z",
    "open": 87012.53,
    "high": 87040.1,
    "low": 86990.77,
    "close": 87021.4,
    "count": 60,
    "gap": False,
}


class Candle(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": CANDLE_EXAMPLE})

    start: int = Field(description="Start of the candle's UTC bucket, in ms (inclusive).")
    datetime: dt.datetime = Field(description="The same moment as an ISO 8601 UTC date.")
    open: float = Field(description="Price of the bucket's first tick (by Deribit's timestamp).")
    high: float
    low: float
    close: float = Field(description="Price of the bucket's last tick.")
    count: int = Field(description="Ticks stored in the bucket.")
    gap: bool = Field(
        description="True when a recorded gap overlaps the bucket: ticks are missing from it."
    )


class CandleRange(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "ticker": "btc_usd",
                "resolution": "1",
                "start_date": "2025-11-24T16:00:00Z",
                "end_date": "2025-11-24T17:00:00Z",
                "items": [CANDLE_EXAMPLE],
                "limit": 1000,
                "next_cursor": None,
            }
        }
    )

    ticker: str
    resolution: str = Field(description="Minutes per candle, or 1D.")
    start_date: dt.datetime = Field(description="Start of the range (UTC, inclusive).")
    end_date: dt.datetime = Field(description="End of the range (UTC, inclusive).")
    items: list[Candle] = Field(
        description="Oldest first: the buckets that overlap the range and hold ticks (a bucket "
        "without ticks has no candle)."
    )
    limit: int
    next_cursor: str | None = Field(
        description="Pass as `cursor` with the same parameters for the next page; null on the last."
    )
