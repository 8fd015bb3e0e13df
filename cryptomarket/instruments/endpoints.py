"""`GET /api/v1/instruments`: the Deribit instruments any ticker parameter accepts. Public."""

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from cryptomarket.core.errors import Unavailable
from cryptomarket.core.openapi_docs import INVALID, error
from cryptomarket.instruments.catalogue import Instrument
from cryptomarket.instruments.schemas import InstrumentList, InstrumentOut
from cryptomarket.prices.tickers import CatalogueUnavailable
from cryptomarket.runtime import RuntimeDep

router = APIRouter(prefix="/api/v1", tags=["prices"])

Currency = Literal["BTC", "ETH", "USDC", "USDT", "EURR", "any"]
Kind = Literal["future", "option", "spot", "future_combo", "option_combo", "perpetual"]


def out(instrument: Instrument) -> InstrumentOut:
    return InstrumentOut.model_construct(
        instrument_name=instrument.name,
        kind=instrument.kind,
        family=instrument.family,
        settlement_period=instrument.settlement_period,
        expiration_timestamp=instrument.expiration_timestamp if instrument.expires else None,
        base_currency=instrument.base_currency,
        quote_currency=instrument.quote_currency,
        settlement_currency=instrument.settlement_currency,
        price_index=instrument.price_index,
        instrument_type=instrument.instrument_type,
        strike=instrument.strike,
        option_type=instrument.option_type,
        tick_size=instrument.tick_size,
        contract_size=instrument.contract_size,
        min_trade_amount=instrument.min_trade_amount,
    )


@router.get(
    "/instruments",
    response_model=InstrumentList,
    summary="Deribit instruments",
    responses={
        422: INVALID,
        503: error(
            "Deribit's instrument list cannot be reached and none is cached.",
            "unavailable",
            "Deribit's list of instruments could not be fetched",
        ),
    },
)
async def instruments(
    runtime: RuntimeDep,
    currency: Annotated[
        Currency, Query(description="Settlement (or base) currency; `any` lists all.")
    ] = "any",
    kind: Annotated[
        Kind | None,
        Query(description="Deribit's kind, or `perpetual`; omitted lists every kind."),
    ] = None,
) -> InstrumentList:
    """Active instruments from Deribit's `public/get_instruments`, cached (refreshed as
    instruments are listed and expire), sorted by name. Any of these names is a ticker:
    subscribe to it, stream it, read its stored history."""
    try:
        listed = await runtime.instruments.all()
    except CatalogueUnavailable as failure:
        raise Unavailable(str(failure)) from None
    chosen = [
        instrument
        for instrument in listed
        if (currency == "any" or currency in instrument.currencies())
        and (kind is None or kind in (instrument.kind, instrument.family))
    ]
    return InstrumentList.model_construct(instruments=[out(i) for i in chosen])
