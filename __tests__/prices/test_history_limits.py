"""Public history costs are bounded per client address (issue 15, defect 2): big pages and CSV
exports spend more of the address's bucket than small requests, and one address flooding the
history never holds back another."""

import asyncio
import contextlib
import sqlite3

import httpx

from __tests__.service import running_service
from cryptomarket.core.db import urls_for
from cryptomarket.core.migrate import upgrade
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.prices.limits import BIG_READS_WAITING

FLOODER = {"X-Forwarded-For": "203.0.113.9"}
OTHER = {"X-Forwarded-For": "198.51.100.4"}
DAY = {"ticker": "btc_usd", "start_date": "2026-01-01_00:00:00", "end_date": "2026-01-02_00:00:00"}


async def by_date(
    client: httpx.AsyncClient, headers: dict[str, str], **params: object
) -> httpx.Response:
    return await client.get("/api/v1/prices/by-date", params={**DAY, **params}, headers=headers)


async def test_an_address_pays_for_the_rows_it_asks_and_others_are_not_held_back(
    simulator: Simulator, sqlite_url: str
) -> None:
    limits = {"HISTORY_BURST": 20, "HISTORY_PER_MINUTE": 60}  # a unit a second
    async with running_service(simulator, sqlite_url, **limits) as service:
        client = service.client
        assert (await by_date(client, FLOODER, limit=10_000)).status_code == 200  # 11 units
        refused = await by_date(client, FLOODER, limit=10_000)  # 9 left: not enough
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "too_many_history_requests"
        assert refused.headers["Retry-After"] in {"2", "3"}  # the 2 units missing, a unit a second
        small = await client.get(
            "/api/v1/prices/by-date", params={**DAY, "limit": 10}, headers=FLOODER
        )
        assert small.status_code == 200  # a small request still fits what is left
        export = await by_date(client, FLOODER, format="csv")  # 20 units
        assert export.status_code == 429 and "Retry-After" in export.headers
        # Another address has a budget of its own.
        assert (await by_date(client, OTHER, format="csv")).status_code == 200
        assert (await by_date(client, OTHER, limit=10_000)).status_code == 429  # 0 left of 20


async def test_an_address_runs_one_big_read_at_a_time_until_its_last_byte_is_sent(
    simulator: Simulator, sqlite_url: str
) -> None:
    """Big reads are built in worker threads beside the event loop: a burst of them from one
    client would hold back every live stream, so the next ones wait for the first to end."""
    upgrade(urls_for(sqlite_url).sync_url)
    start = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    rows = (("btc_usd", start + n * 250, 90_000.5, "2026-01-01 00:00:00") for n in range(300_000))
    path = urls_for(sqlite_url).sync_url.database
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany("INSERT INTO crypto_price_tickers VALUES (?, ?, ?, ?)", rows)
    async with running_service(simulator, sqlite_url) as service:
        client = service.client
        async with client.stream(
            "GET", "/api/v1/prices/by-date", params={**DAY, "format": "csv"}, headers=FLOODER
        ) as export:
            assert export.status_code == 200
            chunks = export.aiter_bytes()
            first = await anext(chunks)  # the export is under way, the rest unread
            waiting = [
                asyncio.create_task(by_date(client, FLOODER, limit=10_000))
                for _ in range(BIG_READS_WAITING)
            ]
            done, _ = await asyncio.wait(waiting, timeout=0.5)
            assert not done  # they wait for the export's last byte
            over = await by_date(client, FLOODER, limit=10_000)  # more than may wait
            assert over.status_code == 429, over.text[:200]
            assert "one at a time" in over.json()["detail"]
            assert over.headers["Retry-After"] == "1"
            assert (await by_date(client, FLOODER, limit=10)).status_code == 200  # small: fine
            assert (await by_date(client, OTHER, limit=10_000)).status_code == 200
            whole = b"".join([first, *[chunk async for chunk in chunks]])
        assert whole.count(b"\n") == 300_001  # the whole export, header included
        answers = await asyncio.gather(*waiting)  # their turns came, one after another
        assert [answer.status_code for answer in answers] == [200] * len(waiting)


async def test_a_page_or_export_costs_the_same_however_it_is_spelled(
    simulator: Simulator, sqlite_url: str
) -> None:
    # FastAPI reads "0010000" and "+10000" as 10,000 rows, and an Accept of TEXT/CSV as an
    # export: each must cost what it reads. And a user's own history route costs the same.
    limits = {"HISTORY_BURST": 20, "HISTORY_PER_MINUTE": 1}
    async with running_service(simulator, sqlite_url, **limits) as service:
        client = service.client
        for spelled, address in (("0010000", "203.0.113.20"), ("+10000", "203.0.113.21")):
            headers = {"X-Forwarded-For": address}
            assert (await by_date(client, headers, limit=spelled)).status_code == 200  # 11 units
            assert (await by_date(client, headers, limit=spelled)).status_code == 429
        shouting = {"X-Forwarded-For": "203.0.113.22", "Accept": "TEXT/CSV"}
        assert (await by_date(client, shouting)).headers["content-type"].startswith("text/csv")
        assert (await by_date(client, shouting)).status_code == 429  # 20 units: none left
        own = service.client_for(await service.sign_in("alice"))
        path = "/api/v1/market/alice/get_order/btc_usd"
        params = {"start_date": DAY["start_date"], "limit": 10_000}
        mine = {"X-Forwarded-For": "203.0.113.23"}
        assert (await own.get(path, params=params, headers=mine)).status_code == 200
        assert (await own.get(path, params=params, headers=mine)).status_code == 429
        await own.aclose()
