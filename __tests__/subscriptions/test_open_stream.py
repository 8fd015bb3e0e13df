"""cancel_all_orders seen from an open stream: every cancelled ticker stops at once."""

import httpx

from __tests__.service import Service
from __tests__.sse import Event, Stream, open_stream

# btc_usd is tracked and eth_usd stays watched by bob, so both keep ticking upstream: only the
# stream's own subscriptions can stop them reaching alice. ada_usdc goes upstream with her.
ALICE_TICKERS = {"btc_usd": 0, "eth_usd": 0, "ada_usdc": 1}
MARKER = "sol_usdc"  # subscribed after the cancel: its ticks show the stream went on


async def subscribe(client: httpx.AsyncClient, user: str, ticker: str, timer: int) -> None:
    response = await client.get(f"/api/v1/market/{user}/create_order/{ticker}?timer={timer}")
    assert response.status_code in (200, 201), response.text


async def prices_until(stream: Stream, ticker: str, newer_than: int, count: int) -> list[Event]:
    """Every price event until `count` prices of `ticker` newer than `newer_than` arrived."""
    seen: list[Event] = []
    while (
        sum(1 for e in seen if e.data["ticker"] == ticker and e.data["timestamp"] > newer_than)
        < count
    ):
        seen.append(await stream.until("price"))
    return seen


async def test_cancel_all_stops_every_cancelled_ticker_on_an_open_stream(
    service: Service,
) -> None:
    alice = service.client_for(await service.sign_in("alice"))
    bob = service.client_for(await service.sign_in("bob"))
    try:
        for ticker, timer in ALICE_TICKERS.items():
            await subscribe(alice, "alice", ticker, timer)
        await subscribe(bob, "bob", "eth_usd", 0)
        async with open_stream(alice) as stream:
            await stream.until("connected")
            for ticker in ALICE_TICKERS:
                await stream.until("price", ticker=ticker)

            removed = await alice.get("/api/v1/market/alice/cancel_all_orders")
            assert removed.status_code == 200
            assert removed.json() == {"user_id": "alice", "removed": sorted(ALICE_TICKERS)}
            # Anything Deribit stamped after this was never meant for alice.
            last_sent = {t: service.simulator.history(t)[-1][0] for t in ALICE_TICKERS}
            cancelled_at = max(last_sent.values())

            await subscribe(alice, "alice", MARKER, 0)
            after = await prices_until(stream, MARKER, newer_than=cancelled_at, count=10)
            late = [
                e.data
                for e in after
                if e.data["ticker"] in ALICE_TICKERS
                and e.data["timestamp"] > last_sent[e.data["ticker"]]
            ]
            assert late == [], "a cancelled ticker still reached the stream"
            assert await stream_subscriptions(service, "alice") == {MARKER}
    finally:
        await alice.aclose()
        await bob.aclose()


async def stream_subscriptions(service: Service, user: str) -> set[str]:
    """What the hub sends the user's open streams."""
    (stream,) = service.runtime.hub.streams_of(user)
    return set(stream.timers)
