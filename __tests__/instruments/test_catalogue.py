"""The instrument list: `GET /api/v1/instruments`, and the cache behind every instrument check."""

from typing import Any

from __tests__.service import Service
from cryptomarket.deribit.errors import ConnectionLost
from cryptomarket.instruments.catalogue import InstrumentCatalogue, parse_instruments

PERPETUAL = {
    "instrument_name": "BTC-PERPETUAL",
    "kind": "future",
    "settlement_period": "perpetual",
    "expiration_timestamp": 32503708800000,
    "is_active": True,
    "settlement_currency": "BTC",
    "base_currency": "BTC",
    "quote_currency": "USD",
    "price_index": "btc_usd",
    "strike": None,
    "some_new_field": {"deribit": "adds these"},
}


def dated(name: str, expiry_ms: int) -> dict[str, Any]:
    return {
        **PERPETUAL,
        "instrument_name": name,
        "settlement_period": "day",
        "expiration_timestamp": expiry_ms,
    }


async def test_the_route_lists_deribits_instruments_with_filters(service: Service) -> None:
    everything = await service.client.get("/api/v1/instruments")
    assert everything.status_code == 200, everything.text
    names = {row["instrument_name"]: row for row in everything.json()["instruments"]}
    assert {"BTC-PERPETUAL", "ETH-PERPETUAL", "SOL_USDC-PERPETUAL"} <= set(names)
    perpetual = names["BTC-PERPETUAL"]
    assert perpetual["family"] == "perpetual" and perpetual["expiration_timestamp"] is None
    assert perpetual["price_index"] == "btc_usd"
    assert any(row["family"] == "option" and row["strike"] for row in names.values())
    linear = await service.client.get("/api/v1/instruments?currency=USDC&kind=perpetual")
    rows = linear.json()["instruments"]
    assert rows and all(
        r["family"] == "perpetual" and r["settlement_currency"] == "USDC" for r in rows
    )
    options = (await service.client.get("/api/v1/instruments?currency=ETH&kind=option")).json()
    assert options["instruments"] and {r["kind"] for r in options["instruments"]} == {"option"}
    for bad in ("currency=DOGE", "kind=swap"):
        refused = await service.client.get(f"/api/v1/instruments?{bad}")
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_input"


def test_rows_are_parsed_leniently() -> None:
    rows = [
        PERPETUAL,
        {"instrument_name": "X-1JAN27", "kind": "future", "is_active": False},  # not active
        {"kind": "future"},  # no name
        "not a row",
        {"instrument_name": "BTC-1JAN27-1d5-C", "kind": "option", "strike": "1.5"},
    ]
    found = parse_instruments(rows)
    assert set(found) == {"BTC-PERPETUAL", "BTC-1JAN27-1d5-C"}
    assert found["BTC-1JAN27-1d5-C"].strike == 1.5
    assert not found["BTC-PERPETUAL"].expires and found["BTC-PERPETUAL"].family == "perpetual"
    assert parse_instruments({"not": "a list"}) == {}


async def test_the_cache_follows_expiries_new_listings_and_outages() -> None:
    now = [1_800_000_000.0]
    listing: list[list[dict[str, Any]]] = [[PERPETUAL, dated("BTC-SOON", 1_800_000_060_000)]]
    calls: list[str] = []
    down = [False]

    async def call(method: str, params: dict[str, Any]) -> Any:
        calls.append(method)
        if down[0]:
            raise ConnectionLost("down")
        return listing[0]

    catalogue = InstrumentCatalogue(call, ttl=600, retry_after=0, clock=lambda: now[0])
    assert (await catalogue.get("BTC-SOON")) is not None
    assert (await catalogue.get("BTC-PERPETUAL")) is not None
    assert len(calls) == 1  # cached
    # A name it lacks may be a new listing: asked again (at most once per retry_after).
    listing[0] = [*listing[0], dated("BTC-NEW", 1_800_086_400_000)]
    assert (await catalogue.get("BTC-NEW")) is not None and len(calls) == 2
    # Past the earliest expiry the list is fetched again, and the expired one is refused even
    # while Deribit still lists it.
    now[0] += 61
    assert await catalogue.get("BTC-SOON") is None
    assert len(calls) == 3
    # Deribit away: the list it has beats none.
    down[0] = True
    now[0] += 10_000
    assert (await catalogue.get("BTC-PERPETUAL")) is not None
