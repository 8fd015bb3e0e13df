"""Open streams end subscribed to exactly what is stored, however changes interleave: a cancel
racing a create in one process, announcements of two replicas arriving out of commit order."""

import asyncio
import contextlib

from __tests__.service import Service
from cryptomarket.core.errors import NotFound
from cryptomarket.distributed.control import SubscriptionChange


async def test_a_cancel_racing_a_create_leaves_the_stream_as_the_store(service_on: Service) -> None:
    await service_on.sign_in("alice")
    subscriptions = service_on.runtime.subscriptions
    stream = service_on.runtime.hub.open("alice", None)
    reading, release = asyncio.Event(), asyncio.Event()
    load_latest = subscriptions.load_latest

    async def slow_load_latest(tickers: list[str]) -> None:  # a slow cache or store read
        reading.set()
        await release.wait()
        await load_latest(tickers)

    subscriptions.load_latest = slow_load_latest  # type: ignore[method-assign]
    create = asyncio.create_task(subscriptions.subscribe("alice", "sol_usdc", 60))
    await reading.wait()
    with contextlib.suppress(NotFound):  # the create has not committed yet: nothing to cancel
        await subscriptions.unsubscribe("alice", ["sol_usdc"])
    release.set()
    await create
    stored = await subscriptions.subscriptions("alice")
    assert stream.timers == {ticker: timer for ticker, timer in stored.items() if timer}
    service_on.runtime.hub.close(stream)


async def test_announcements_out_of_commit_order_still_leave_the_stream_as_the_store(
    service_on: Service,
) -> None:
    await service_on.sign_in("alice")
    subscriptions = service_on.runtime.subscriptions
    stream = service_on.runtime.hub.open("alice", None)
    await subscriptions.subscribe("alice", "eth_usd", 30)
    # Another replica's create of sol_usdc, announced after its later cancel was: not stored.
    await subscriptions.apply_announced(
        SubscriptionChange("alice", "sol_usdc", 60, removed=False, origin="replica-b")
    )
    # And a cancel of eth_usd from before the create above, arriving last.
    await subscriptions.apply_announced(
        SubscriptionChange("alice", "eth_usd", None, removed=True, origin="replica-b")
    )
    assert stream.timers == {"eth_usd": 30}
    service_on.runtime.hub.close(stream)


async def test_a_resync_reaches_a_stream_still_opening(service_on: Service) -> None:
    # A stream opening holds the changes made meanwhile until it settles; a resync (the control
    # channel back after missing announcements) must correct those as well as its live ones.
    await service_on.sign_in("alice")
    subscriptions = service_on.runtime.subscriptions
    hub = service_on.runtime.hub
    stream = hub.open("alice", None, settle_later=True)
    subscriptions.apply(SubscriptionChange("alice", "sol_usdc", 60, removed=False))  # announced
    await subscriptions.subscribe("alice", "eth_usd", 30)  # stored; sol_usdc never was
    await subscriptions.resync_open_streams()
    assert hub.settle(stream, await subscriptions.subscriptions("alice")) == {"eth_usd": 30}
    hub.close(stream)
