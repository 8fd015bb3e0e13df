"""Bodies of the instrument list route."""

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

INSTRUMENT_EXAMPLE: JsonDict = {
    "instrument_name": "BTC-PERPETUAL",
    "kind": "future",
    "family": "perpetual",
    "settlement_period": "perpetual",
    "expiration_timestamp": None,
    "base_currency": "BTC",
    "quote_currency": "USD",
    "settlement_currency": "BTC",
    "price_index": "btc_usd",
    "instrument_type": "reversed",
    "strike": None,
    "option_type": None,
    "tick_size": 0.5,
    "contract_size": 10.0,
    "min_trade_amount": 10.0,
}


class InstrumentOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": INSTRUMENT_EXAMPLE})

    instrument_name: str = Field(description="Use it as the ticker, e.g. in create_order.")
    kind: str = Field(description="Deribit's kind: future (perpetuals too), option, spot, combos.")
    family: str = Field(description="perpetual, future, option, spot or combo.")
    settlement_period: str | None = None
    expiration_timestamp: int | None = Field(None, description="ms; null for perpetuals.")
    base_currency: str | None = None
    quote_currency: str | None = None
    settlement_currency: str | None = None
    price_index: str | None = Field(None, description="The index it follows, e.g. btc_usd.")
    instrument_type: str | None = Field(None, description="linear or reversed (inverse).")
    strike: float | None = None
    option_type: str | None = Field(None, description="call or put (options).")
    tick_size: float | None = None
    contract_size: float | None = None
    min_trade_amount: float | None = None


class InstrumentList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"instruments": [INSTRUMENT_EXAMPLE]}})

    instruments: list[InstrumentOut] = Field(description="Active instruments, by name.")
