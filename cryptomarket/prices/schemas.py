"""What the price API answers, with the examples shown in /docs."""

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, with_config
from pydantic.config import JsonDict
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

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


class PricePoint(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": POINT_EXAMPLE})

    ticker: str = Field(description="Deribit index name.")
    price: float = Field(description="Index price.")
    timestamp: int = Field(description="Deribit's timestamp of the tick, in milliseconds (UTC).")
    datetime: dt.datetime = Field(description="The same moment as an ISO 8601 UTC date.")


# A PricePoint inside a page: a plain dict, so a page of 10,000 is built and encoded without a
# model object each (about a tenth of the time).
@with_config(ConfigDict(json_schema_extra={"example": POINT_EXAMPLE}))
class PriceItem(TypedDict):
    """One stored price."""

    ticker: Annotated[str, Field(description="Deribit index name.")]
    price: Annotated[float, Field(description="Index price.")]
    timestamp: Annotated[
        int, Field(description="Deribit's timestamp of the tick, in milliseconds (UTC).")
    ]
    datetime: Annotated[dt.datetime, Field(description="The same moment as an ISO 8601 UTC date.")]


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
