"""The price API served by uvicorn over real sockets, on SQLite and on PostgreSQL."""

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from __tests__.app_server import app_settings, serving
from __tests__.helpers import eventually_async
from cryptomarket.app import create_app
from cryptomarket.core.db import Database
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.prices.models import Tick
from cryptomarket.prices.repository import PriceRepository
from cryptomarket.prices.schemas import PricePage, PriceRange

# 25 stored ticks of sol_usdc, one a minute from 2024-05-01 00:00 UTC; nothing ingests sol_usdc.
BASE = 1_714_521_600_000
MINUTE = 60_000
SEEDED = [Tick("sol_usdc", 150.0 + i, BASE + i * MINUTE) for i in range(25)]


@dataclass
class Api:
    client: httpx.AsyncClient
    simulator: Simulator

    async def get(self, path: str, **params: object) -> httpx.Response:
        given = {name: value for name, value in params.items() if value is not None}
        return await self.client.get(path, params=given)


@pytest.fixture
async def api(migrated_url: str, simulator: Simulator) -> AsyncIterator[Api]:
    database = Database(migrated_url)
    async with database.transaction() as connection:
        await PriceRepository(connection, database.tables).add_ticks(SEEDED)
    await database.dispose()
    settings = app_settings(
        DATABASE_URL=migrated_url, DERIBIT_WS_URL=simulator.url, TRACKED_TICKERS="btc_usd"
    )
    async with (
        serving(create_app(settings)) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
    ):
        yield Api(client, simulator)


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "code"}
    assert body["code"] == code
    for word in words:
        assert word in body["detail"]


async def test_prices_come_newest_first_a_page_at_a_time(api: Api) -> None:
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        response = await api.get("/api/v1/prices", ticker="sol_usdc", limit=10, cursor=cursor)
        assert response.status_code == 200
        page = response.json()
        seen += [item["timestamp"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted((tick.timestamp for tick in SEEDED), reverse=True)
    first = (await api.get("/api/v1/prices", ticker="sol_usdc", limit=1)).json()["items"][0]
    assert first == {
        "ticker": "sol_usdc",
        "price": 174.0,
        "timestamp": BASE + 24 * MINUTE,
        "datetime": "2024-05-01T00:24:00Z",
    }


async def test_latest_is_the_newest_stored_price(api: Api) -> None:
    response = await api.get("/api/v1/prices/latest", ticker="sol_usdc")
    assert response.status_code == 200
    assert response.json()["timestamp"] == BASE + 24 * MINUTE
    assert_error(
        await api.get("/api/v1/prices/latest", ticker="xrp_usdc"), 404, "no_prices", "xrp_usdc"
    )


@pytest.mark.parametrize(
    ("start_date", "end_date", "expected"),
    [
        ("2024-05-01_00:05:00", "2024-05-01_00:09:00", range(5, 10)),
        ("2024-5-1_0:5:0", "2024-5-1_0:9:0", range(5, 10)),
        ("2024-05-01T03:05:00+03:00", "2024-05-01T00:09:00Z", range(5, 10)),
        ("2024-05-01T00:20:00", None, range(20, 25)),  # no end: until now
        ("2024-05-01_00:05:30", "2024-05-01_00:05:59", range(0)),
    ],
)
async def test_by_date_filters_on_deribits_timestamp(
    api: Api, start_date: str, end_date: str | None, expected: range
) -> None:
    response = await api.get(
        "/api/v1/prices/by-date", ticker="sol_usdc", start_date=start_date, end_date=end_date
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["timestamp"] for item in body["items"]] == [BASE + i * MINUTE for i in expected]
    assert body["next_cursor"] is None


async def test_a_large_range_is_paginated_not_truncated(api: Api) -> None:
    params = {"ticker": "sol_usdc", "start_date": "2024-05-01_00:00:00", "limit": 7}
    seen: list[int] = []
    cursor = None
    while True:
        body = (await api.get("/api/v1/prices/by-date", **params, cursor=cursor)).json()
        seen += [item["timestamp"] for item in body["items"]]
        if (cursor := body["next_cursor"]) is None:
            break
    assert seen == [tick.timestamp for tick in SEEDED]


async def test_a_big_page_answers_what_its_response_model_says(api: Api, migrated_url: str) -> None:
    # Big pages are built without models and encoded off the event loop (kit/json.py): the
    # text must be exactly the documented model's, for both page routes.
    many = [Tick("ada_usdc", 0.25 + i / 1e4, BASE + i * 1000) for i in range(1_200)]
    many[7] = Tick("ada_usdc", 1.0, many[7].timestamp)  # a whole-number price stays a float
    database = Database(migrated_url)
    async with database.transaction() as connection:
        await PriceRepository(connection, database.tables).add_ticks(many)
    await database.dispose()
    ranged = await api.get(
        "/api/v1/prices/by-date", ticker="ada_usdc", start_date="2024-05-01_00:00:00", limit=1_100
    )
    newest = await api.get("/api/v1/prices", ticker="ada_usdc", limit=1_100)
    for response, model in ((ranged, PriceRange), (newest, PricePage)):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.text == model.model_validate_json(response.text).model_dump_json()
        assert len(response.json()["items"]) == 1_100 and response.json()["next_cursor"]
    first = ranged.json()["items"][7]
    assert first == {
        "ticker": "ada_usdc",
        "price": 1.0,
        "timestamp": BASE + 7_000,
        "datetime": "2024-05-01T00:00:07Z",
    }


async def test_bad_input_gets_a_sentence_never_a_500(api: Api) -> None:
    by_date = "/api/v1/prices/by-date"
    assert_error(
        await api.get(by_date, ticker="sol_usdc", start_date="2024-05-02", end_date="2024-05-01"),
        422,
        "invalid_date_range",
        "is after end_date",
    )
    assert_error(
        await api.get(by_date, ticker="sol_usdc", start_date="last tuesday"),
        422,
        "invalid_date",
        "start_date",
        "YYYY-MM-DD_HH:MM:SS",
    )
    assert_error(await api.get(by_date, ticker="sol_usdc"), 422, "invalid_input", "start_date")
    assert_error(
        await api.get("/api/v1/prices", ticker="sol_usdc", limit=10_001),
        422,
        "invalid_input",
        "limit",
    )
    for limit in ("²", "١٢", "5x", "-3"):  # digits of other scripts pass str.isdigit(), not int
        for path in ("/api/v1/prices", "/api/v1/prices/candles"):
            assert_error(
                await api.get(path, ticker="sol_usdc", limit=limit), 422, "invalid_input", "limit"
            )
    for cursor in ("abc", "²", "9" * 19):
        assert_error(
            await api.get("/api/v1/prices", ticker="sol_usdc", cursor=cursor),
            422,
            "invalid_input",
            "cursor",
        )
    assert_error(
        await api.get("/api/v1/prices", ticker="BTC USD; drop table"), 422, "invalid_input"
    )
    assert_error(await api.get("/api/v1/prices"), 422, "invalid_input", "ticker")
    assert_error(
        await api.get("/api/v1/prices", ticker="doge_usd"),
        404,
        "unknown_ticker",
        "doge_usd",
        "/api/v1/tickers",
    )
    assert_error(await api.get("/api/v1/nothing-here"), 404, "not_found")


async def test_tickers_are_deribits_index_names(api: Api) -> None:
    response = await api.get("/api/v1/tickers")
    assert response.status_code == 200
    tickers = response.json()["tickers"]
    assert {"btc_usd", "eth_usd", "sol_usdc"} <= set(tickers)
    assert api.simulator.calls["public/get_index_price_names"] == 1
    await api.get("/api/v1/tickers")
    assert api.simulator.calls["public/get_index_price_names"] == 1  # cached


async def test_live_prices_arrive_and_health_says_so(api: Api) -> None:
    async def latest_matches_simulator() -> bool:
        response = await api.get("/api/v1/prices/latest", ticker="btc_usd")
        return response.status_code == 200 and response.json()["timestamp"] in {
            timestamp for timestamp, _ in api.simulator.history("btc_usd")
        }

    await eventually_async(latest_matches_simulator, what="a live btc_usd price in the store")
    health = (await api.get("/health")).json()
    assert health == {"status": "ok", "database": "ok", "cache": "ok", "upstream": "connected"}


async def test_docs_describe_every_price_route(api: Api) -> None:
    schema = (await api.get("/openapi.json")).json()
    for path in ("/api/v1/prices", "/api/v1/prices/latest", "/api/v1/prices/by-date"):
        operation = schema["paths"][path]["get"]
        assert operation["summary"]
        assert {"404", "422"} <= set(operation["responses"])
        for parameter in operation["parameters"]:
            assert parameter.get("description"), (path, parameter["name"])
