"""Bodies of the seed-compatible market routes."""

from pydantic import BaseModel, ConfigDict, Field

MAX_TIMER = 86_400


class TimerBody(BaseModel):
    """Optional JSON body of POST create_order; `?timer=` does the same."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"timer": 5}})

    timer: int | None = Field(
        None, ge=0, le=MAX_TIMER, description="Seconds between prices; 0 for every tick."
    )


class Subscription(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"user_id": "alice", "ticker": "btc_usd", "timer": 5}}
    )

    user_id: str
    ticker: str
    timer: int | None = Field(
        description="Seconds between prices; 0: every tick; null: the stream's ?timer= (else 60)."
    )


class Created(Subscription):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"user_id": "alice", "ticker": "btc_usd", "timer": 5, "created": True}
        }
    )

    created: bool = Field(description="true: new subscription (201); false: already there (200).")


class Removed(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"user_id": "alice", "removed": ["btc_usd", "eth_usd"]}}
    )

    user_id: str
    removed: list[str] = Field(description="Tickers no longer subscribed.")
