"""Instruments as tickers, end to end on SQLite and PostgreSQL: subscribe a perpetual, a future
and an option, watch each kind's fields stream, read their stored history, see one expire."""

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from __tests__.databases import fresh_database_url
from __tests__.helpers import eventually_async
from __tests__.service import Service, running_service
from __tests__.sse import open_stream
from cryptomarket.deribit.simulator import Simulator

FUNDING = {"current_funding", "funding_8h"}
OPTION = {"greeks", "mark_iv", "bid_iv", "ask_iv", "underlying_price"}
BOOK = {"best_bid_price", "best_ask_price", "best_bid_amount", "best_ask_amount", "mark_price"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database_url(request, request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def service(simulator: Simulator, database_url: str) -> AsyncIterator[Service]:
    async with running_service(simulator, database_url, INSTRUMENT_STORE_INTERVAL_MS=200) as s:
        yield s


async def pick(service: Service) -> tuple[str, str]:
    """A dated future and an option from the instrument list."""
    listed = (await service.client.get("/api/v1/instruments?currency=BTC")).json()["instruments"]
    future = next(i["instrument_name"] for i in listed if i["family"] == "future")
    option = next(i["instrument_name"] for i in listed if i["family"] == "option")
    return future, option


async def test_each_kind_streams_its_fields_and_its_history_is_stored(service: Service) -> None:
    future, option = await pick(service)
    client = service.client_for(await service.sign_in("alice"))
    for name in ("BTC-PERPETUAL", future, option):
        answer = await client.get(f"/api/v1/market/alice/create_order/{name}?timer=0")
        assert answer.status_code == 201, answer.text
    own = {"BTC-PERPETUAL": FUNDING, future: {"estimated_delivery_price"}, option: OPTION}
    async with open_stream(client) as stream:
        for name, fields in own.items():
            price = await stream.until("price", ticker=name)
            assert BOOK | fields <= set(price.data), (name, sorted(price.data))
            assert price.id == f"{name}:{price.data['timestamp']}"
            assert price.data["price"] == price.data["mark_price"]
        assert "current_funding" not in (await stream.until("price", ticker=option)).data
        # timer=0 is every update: ten a second for a 100ms channel.
        updates = [e for e in await stream.events_for(1.0) if e.data.get("ticker") == future]
        assert len(updates) >= 4

    # Stored, at most one per INSTRUMENT_STORE_INTERVAL_MS, with the kind's fields.
    async def stored() -> bool:
        answer = await service.client.get(f"/api/v1/prices?ticker={option}&limit=50")
        return answer.status_code == 200 and len(answer.json()["items"]) >= 3

    await eventually_async(stored, what="option ticks stored")
    items = (await service.client.get(f"/api/v1/prices?ticker={option}&limit=50")).json()["items"]
    stamps = [item["timestamp"] for item in items]
    assert len({ts // 200 for ts in stamps}) == len(stamps)  # one per 200 ms window
    assert set(items[0]) >= OPTION and items[0]["greeks"]["delta"] is not None
    latest = (await service.client.get("/api/v1/prices/latest?ticker=BTC-PERPETUAL")).json()
    assert set(latest) >= FUNDING
    by_date = await service.client.get(
        f"/api/v1/prices/by-date?ticker={future}&start_date=2020-01-01"
    )
    assert by_date.status_code == 200 and by_date.json()["items"]
    assert "estimated_delivery_price" in by_date.json()["items"][0]
    await client.aclose()


async def test_an_expiring_instrument_ends_its_subscriptions_and_channel(service: Service) -> None:
    _future, option = await pick(service)
    client = service.client_for(await service.sign_in("alice"))
    await client.get(f"/api/v1/market/alice/create_order/{option}?timer=5")  # not every tick
    await client.get("/api/v1/market/alice/create_order/btc_usd?timer=0")
    channel = f"ticker.{option}.100ms"
    async with open_stream(client) as stream:
        await stream.until("price", ticker=option)
        assert service.simulator.expire_instrument(option)
        final = await stream.until("price", ticker=option, state="closed")
        assert final.data["delivery_price"] is not None
        expired = await stream.until("expired")
        assert expired.data["ticker"] == option and expired.data["delivery_price"] is not None
        assert (await stream.until("price")).data["ticker"] == "btc_usd"  # the stream goes on

        async def released() -> bool:
            ingest = service.runtime.ingest
            return channel not in ingest.connection.channels and option not in ingest.tickers

        await eventually_async(released, what="the expired channel released upstream")
        after = [e for e in await stream.events_for(0.5) if e.data.get("ticker") == option]
        assert after == []
    mine = (await client.get("/api/v1/market/alice/cancel_order/btc_usd")).json()
    assert mine["removed"] == ["btc_usd"]
    gone = await client.get(f"/api/v1/market/alice/cancel_order/{option}")
    assert gone.status_code == 404  # its subscription ended with it
    again = await client.get(f"/api/v1/market/alice/create_order/{option}")
    assert again.status_code == 404 and "/api/v1/instruments" in again.json()["detail"]

    # Its history stays readable, its final frame (the delivery price) stored whatever the
    # store interval.
    async def final_stored() -> bool:
        history = await service.client.get(f"/api/v1/prices?ticker={option}")
        return history.status_code == 200 and history.json()["items"][0]["state"] == "closed"

    await eventually_async(final_stored, what="the final frame stored")
    await client.aclose()


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("BTC-1JAN99", 404),  # well formed, not listed
        ("BTC-PERPETUAL'; DROP TABLE", 422),
        ("Btc-perpetual", 404),
        ("ETH-" + "9" * 80, 422),
    ],
)
async def test_bad_instrument_names_are_clear_errors(
    service: Service, name: str, status: int
) -> None:
    client = service.client_for(await service.sign_in("alice"))
    answers = [
        await client.get(f"/api/v1/market/alice/create_order/{name}"),
        await service.client.get("/api/v1/prices/latest", params={"ticker": name}),
        await service.client.get(
            "/api/v1/prices/by-date", params={"ticker": name, "start_date": "2026-01-01"}
        ),
    ]
    for answer in answers:
        assert answer.status_code in (status, 422), answer.text
        body = answer.json()
        assert set(body) == {"detail", "code"}
        if answer.status_code == 404:
            assert re.search(r"/api/v1/instruments", body["detail"]), body
    await client.aclose()


async def test_an_option_that_never_traded_streams_stores_and_exports_its_nulls(
    service: Service,
) -> None:
    # A far out-of-the-money option: no bids (an empty side is 0.0), never traded (last price
    # and 24 h stats null). Every path must carry the nulls, none may fail on them.
    listed = (await service.client.get("/api/v1/instruments?currency=BTC")).json()["instruments"]
    calls = [i for i in listed if i["family"] == "option" and i["option_type"] == "call"]
    first_expiry = min(i["expiration_timestamp"] for i in calls)
    wing = max(
        (i for i in calls if i["expiration_timestamp"] == first_expiry), key=lambda i: i["strike"]
    )["instrument_name"]
    client = service.client_for(await service.sign_in("alice"))
    answer = await client.get(f"/api/v1/market/alice/create_order/{wing}?timer=0")
    assert answer.status_code == 201, answer.text
    async with open_stream(client) as stream:
        price = await stream.until("price", ticker=wing)
    assert price.data["last_price"] is None and price.data["best_bid_price"] == 0.0
    assert price.data["stats"]["high"] is None and price.data["stats"]["price_change"] is None

    async def stored() -> bool:
        answer = await service.client.get(f"/api/v1/prices?ticker={wing}&limit=5")
        return answer.status_code == 200 and bool(answer.json()["items"])

    await eventually_async(stored, what="its updates stored")
    item = (await service.client.get(f"/api/v1/prices?ticker={wing}&limit=5")).json()["items"][0]
    assert item["last_price"] is None and item["stats"]["low"] is None
    exported = await service.client.get(
        f"/api/v1/prices/by-date?ticker={wing}&start_date=2020-01-01&format=csv"
    )
    assert exported.status_code == 200, exported.text
    header, row = exported.text.splitlines()[:2]
    columns = dict(zip(header.split(","), row.split(","), strict=True))
    assert columns["last_price"] == "" and columns["stats_high"] == ""
    candles = await service.client.get(
        f"/api/v1/prices/candles?ticker={wing}&resolution=1&start_date=2020-01-01"
    )
    assert candles.status_code == 200, candles.text
    await client.aclose()
