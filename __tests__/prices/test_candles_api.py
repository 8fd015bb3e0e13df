"""Candles and CSV downloads through the served API, on SQLite and on PostgreSQL (the seeded
ticks of test_api: 25 of sol_usdc, one a minute from 2024-05-01 00:00 UTC)."""

import asyncio
import contextlib
import csv
import io
import sqlite3
import time

import httpx
from sqlalchemy import text

from __tests__.app_server import app_settings, serving
from __tests__.helpers import eventually_async
from __tests__.prices.test_api import BASE, MINUTE, SEEDED, Api, api, assert_error
from cryptomarket.app import create_app
from cryptomarket.core.db import create_sync_engine, urls_for
from cryptomarket.core.tables import build_tables
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.prices.models import Tick
from cryptomarket.prices.repository import PriceRepository

__all__ = ["api"]  # the fixture, shared with test_api

RANGE = {
    "ticker": "sol_usdc",
    "start_date": "2024-05-01_00:00:00",
    "end_date": "2024-05-01_01:00:00",
}


async def test_five_minute_candles_hold_five_ticks_each_and_page_exactly(api: Api) -> None:
    response = await api.get("/api/v1/prices/candles", **RANGE, resolution="5")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["resolution"] == "5"
    assert [item["start"] for item in body["items"]] == [BASE + i * 5 * MINUTE for i in range(5)]
    assert body["items"][0] == {
        "start": BASE,
        "datetime": "2024-05-01T00:00:00Z",
        "open": 150.0,
        "high": 154.0,
        "low": 150.0,
        "close": 154.0,
        "count": 5,
        "gap": False,
    }
    # Two at a time, the pages put together are the one answer.
    paged, cursor = [], None
    while True:
        page = (
            await api.get("/api/v1/prices/candles", **RANGE, resolution="5", limit=2, cursor=cursor)
        ).json()
        paged += page["items"]
        if (cursor := page["next_cursor"]) is None:
            break
    assert paged == body["items"]


async def test_the_candle_a_start_date_falls_in_is_whole(api: Api) -> None:
    body = (
        await api.get(
            "/api/v1/prices/candles",
            ticker="sol_usdc",
            start_date="2024-05-01_00:07:30",
            end_date="2024-05-01_00:12:00",
            resolution="10",
        )
    ).json()
    assert [(item["start"], item["count"]) for item in body["items"]] == [
        (BASE, 10),
        (BASE + 10 * MINUTE, 10),
    ]


def parsed(response_text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(response_text)))


async def test_by_date_as_csv_is_the_json_answer_whole(api: Api) -> None:
    response = await api.get("/api/v1/prices/by-date", **RANGE, format="csv")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith('attachment; filename="sol_usdc_')
    rows = parsed(response.text)
    json_items = (await api.get("/api/v1/prices/by-date", **RANGE, limit=10)).json()["items"]
    assert len(rows) == len(SEEDED)  # one download, not a page of 10
    assert [
        {
            "ticker": r["ticker"],
            "timestamp": int(r["timestamp"]),
            "datetime": r["datetime"],
            "price": float(r["price"]),
        }
        for r in rows[:10]
    ] == json_items
    # An Accept header asks for the same.
    accepted = await api.client.get(
        "/api/v1/prices/by-date", params=RANGE, headers={"Accept": "text/csv"}
    )
    assert accepted.text == response.text


async def test_candles_as_csv_are_the_json_answer(api: Api) -> None:
    as_json = (await api.get("/api/v1/prices/candles", **RANGE, resolution="3")).json()["items"]
    response = await api.get("/api/v1/prices/candles", **RANGE, resolution="3", format="csv")
    assert response.status_code == 200, response.text
    rows = parsed(response.text)
    assert [
        {
            "start": int(r["start"]),
            "datetime": r["datetime"],
            "open": float(r["open"]),
            "high": float(r["high"]),
            "low": float(r["low"]),
            "close": float(r["close"]),
            "count": int(r["count"]),
            "gap": r["gap"] == "true",
        }
        for r in rows
    ] == as_json
    assert sum(int(r["count"]) for r in rows) == len(SEEDED)


async def test_bad_candle_and_export_input_gets_a_sentence(api: Api) -> None:
    candles = "/api/v1/prices/candles"
    assert_error(
        await api.get(candles, **RANGE, resolution="7"), 422, "invalid_resolution", "1, 3, 5"
    )
    assert_error(
        await api.get(candles, **{**RANGE, "start_date": "soon"}, resolution="1"),
        422,
        "invalid_date",
        "start_date",
    )
    assert_error(await api.get(candles, ticker="sol_usdc", resolution="1"), 422, "invalid_input")
    # A CSV download checks its input before it starts.
    assert_error(
        await api.get(
            "/api/v1/prices/by-date",
            ticker="sol_usdc",
            start_date="2024-05-02",
            end_date="2024-05-01",
            format="csv",
        ),
        422,
        "invalid_date_range",
    )
    assert_error(
        await api.get(candles, **RANGE, resolution="x", format="csv"), 422, "invalid_resolution"
    )
    assert_error(
        await api.get("/api/v1/prices/by-date", **RANGE, format="xml"),
        422,
        "invalid_input",
        "format",
    )
    assert_error(
        await api.get(candles, **{**RANGE, "ticker": "doge_usd"}, resolution="1"),
        404,
        "unknown_ticker",
    )


# Ticks of xrp_usdc (nothing ingests it here): exporting them takes seconds, far longer than
# the check below waits.
BULK = 2_000_000


def seed_bulk(url: str) -> None:
    """BULK ticks of xrp_usdc, generated by the database itself (an insert from Python would
    take longer than the rest of the test)."""
    engine = create_sync_engine(urls_for(url).sync_url)
    table = build_tables(engine.dialect.name).price_tickers
    name = f"{table.schema}.{table.name}" if table.schema else table.name
    series = (
        f"generate_series(1, {BULK}) AS s(x)"
        if engine.dialect.name == "postgresql"
        else "(WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s LIMIT "  # noqa: S608
        f"{BULK}) SELECT x FROM s) AS s"
    )
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    f"INSERT INTO {name} (ticker, timestamp, price, received_at) "  # noqa: S608
                    f"SELECT 'xrp_usdc', {BASE} + s.x * 1000, 100.0 + s.x % 977, "
                    f"CURRENT_TIMESTAMP FROM {series}"
                )
            )
    finally:
        engine.dispose()


async def test_a_client_leaving_mid_export_ends_its_query(
    migrated_url: str, simulator: Simulator
) -> None:
    await asyncio.to_thread(seed_bulk, migrated_url)
    app = create_app(
        app_settings(DATABASE_URL=migrated_url, DERIBIT_WS_URL=simulator.url, TRACKED_TICKERS="")
    )
    async with (
        serving(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
    ):
        database = app.state.runtime.database
        pool = database.engine.sync_engine.pool
        # SQLite exports read on a connection of their own, outside the pool: while its read
        # is open, a WAL checkpoint cannot finish (and the WAL would grow without bound).
        path = database.urls.sync_url.database

        def reading() -> bool:
            with contextlib.closing(sqlite3.connect(path or "", timeout=0.1)) as connection:
                busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return bool(busy)

        if database.dialect == "sqlite":  # a WAL with frames in it, which the export reads
            async with database.transaction() as connection:
                repository = PriceRepository(connection, database.tables)
                await repository.add_ticks([Tick("ltc_usdc", 80.0, BASE)])

        params = {"ticker": "xrp_usdc", "start_date": "2024-05-01", "format": "csv"}
        async with client.stream("GET", "/api/v1/prices/by-date", params=params) as response:
            assert response.status_code == 200
            received = b""
            async for chunk in response.aiter_bytes():
                received += chunk
                if b"\nxrp_usdc," in received:  # the first rows came: leave now
                    break
            assert received.startswith(b"ticker,timestamp,datetime,price\nxrp_usdc,")
            if database.dialect == "sqlite":
                assert reading()  # the export's own read, still open
            left = time.monotonic()
        # The rest of the 2,000,000 rows is never read: the connection is back in the pool
        # (closed, on SQLite) at once, not after the export would have finished.

        async def returned() -> bool:
            sqlite = database.dialect == "sqlite"
            return pool.checkedout() == 0 and not (sqlite and await asyncio.to_thread(reading))

        await eventually_async(returned, timeout=3, what="the export's connection returned")
        assert time.monotonic() - left < 3
        latest = await client.get("/api/v1/prices/latest", params={"ticker": "xrp_usdc"})
        assert latest.status_code == 200, latest.text
        assert latest.json()["timestamp"] == BASE + BULK * 1000
