"""What the price API answers, with the examples shown in /docs."""

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class PricePoint(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "ticker": "btc_usd",
                "price": 87012.53,
                "timestamp": 1764000000123,
                "datetime": "2025-11-24T16:00:00.123000Z",
            }
        }
    )

    ticker: str = Field(description="Deribit index name.")
    price: float = Field(description="Index price.")
    timestamp: int = Field(description="Deribit's timestamp of the tick, in milliseconds (UTC).")
    datetime: dt.datetime = Field(description="The same moment as an ISO 8601 UTC date.")


class PricePage(BaseModel):
    ticker: str
    items: list[PricePoint] = Field(description="Newest first.")
    limit: int
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


class PriceRange(BaseModel):
    ticker: str
    start_date: dt.datetime = Field(description="Start of the range (UTC, inclusive).")
    end_date: dt.datetime = Field(description="End of the range (UTC, inclusive).")
    items: list[PricePoint] = Field(description="Oldest first.")
    limit: int
    next_cursor: str | None = Field(
        description="Pass as `cursor` with the same dates for the next page; null on the last."
    )


class TickerList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"tickers": ["btc_usd", "eth_usd", "sol_usdc"]}}
    )

    tickers: list[str] = Field(description="Index names Deribit supports (cached for an hour).")
