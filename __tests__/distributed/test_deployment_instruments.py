"""Instruments in the distributed deployment, every part a real process: subscribed through one
replica, streamed from another with their fields, stored by the persist job (one update per
INSTRUMENT_STORE_INTERVAL_MS), and an expiry that reaches every replica and the store."""

import httpx
import pytest

from __tests__.distributed.test_deployment import Deployment, Recorded, deployment  # noqa: F401
from __tests__.helpers import eventually_async
from __tests__.sse import open_stream
from cryptomarket.deribit.simulator import Simulator

pytestmark = pytest.mark.timeout(180)


async def test_instruments_across_replicas_the_store_and_an_expiry(
    deployment: tuple[Deployment, Simulator],  # noqa: F811
) -> None:
    setup, simulator = deployment
    a_url, b_url = setup.replicas
    option = simulator.instrument_names("option")[0]
    async with httpx.AsyncClient(base_url=a_url, timeout=10) as a:
        signed = await a.post(
            "/api/v1/sessions",
            json={
                "user_id": "alice",
                "client_id": "sim-alice",
                "client_secret": "sim-alice-secret",
            },
        )
        token = signed.json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        for name in ("BTC-PERPETUAL", option):
            answer = await a.get(f"/api/v1/market/alice/create_order/{name}?timer=0", headers=auth)
            assert answer.status_code == 201, answer.text
        async with (
            httpx.AsyncClient(base_url=b_url, timeout=10, headers=auth) as b,
            open_stream(b) as stream,
        ):
            recorded = Recorded(stream)
            perpetual = await recorded.until("price", ticker="BTC-PERPETUAL")
            assert {"current_funding", "best_bid_price", "best_ask_price"} <= set(perpetual.data)
            await recorded.until("price", ticker=option)

            async def stored() -> bool:
                page = await b.get("/api/v1/prices?ticker=BTC-PERPETUAL&limit=20")
                return page.status_code == 200 and len(page.json()["items"]) >= 3

            await eventually_async(stored, timeout=30, what="the persist job stored instruments")
            items = (await b.get("/api/v1/prices?ticker=BTC-PERPETUAL&limit=20")).json()["items"]
            windows = [item["timestamp"] // 1000 for item in items]
            assert len(set(windows)) == len(windows)  # one per second (the default interval)
            assert "funding_8h" in items[0]

            assert simulator.expire_instrument(option)
            expired = await recorded.until("expired", timeout=15)
            assert expired.data["ticker"] == option

        # Every replica refuses it now, and its subscription is gone from the store.
        async def refused_everywhere() -> bool:
            answers = []
            for base_url in (a_url, b_url):
                async with httpx.AsyncClient(base_url=base_url, timeout=10, headers=auth) as c:
                    answers.append(await c.get(f"/api/v1/market/alice/create_order/{option}"))
            return all(answer.status_code == 404 for answer in answers)

        await eventually_async(refused_everywhere, timeout=15, what="the expiry on both replicas")
        gone = await a.get(f"/api/v1/market/alice/cancel_order/{option}", headers=auth)
        assert gone.status_code == 404
