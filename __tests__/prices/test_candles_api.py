"""Candles and CSV downloads through the served API, on SQLite and on PostgreSQL (the seeded
ticks of test_api: 25 of sol_usdc, one a minute from 2024-05-01 00:00 UTC)."""

import csv
import io

from __tests__.prices.test_api import BASE, MINUTE, SEEDED, Api, api, assert_error

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
