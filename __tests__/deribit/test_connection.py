"""The Deribit connection against a running simulator, over real sockets."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from __tests__.helpers import eventually
from __tests__.simulated import sim_control
from cryptomarket.deribit.auth import Credentials
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.deribit.connection import ConnectionState, DeribitConnection
from cryptomarket.deribit.credits import CreditBudget
from cryptomarket.deribit.errors import (
    CreditTimeout,
    InvalidCredentials,
    InvalidParams,
    LoginOverLimit,
    MethodNotFound,
    RequestTimeout,
    Unauthorized,
)
from cryptomarket.deribit.simulator import Simulator

ALICE = Credentials("sim-alice", "sim-alice-secret")
FAST_BACKOFF = Backoff(initial=0.05, maximum=0.5)

Factory = Callable[..., Awaitable[DeribitConnection]]


@pytest.fixture
async def open_connection(simulator: Simulator) -> AsyncIterator[Factory]:
    """Opens started connections to the simulator (heartbeat 0.5 s) and closes them after."""
    opened: list[DeribitConnection] = []

    async def factory(**options: Any) -> DeribitConnection:
        options.setdefault("budget", CreditBudget())
        options.setdefault("heartbeat_interval", 0.5)
        options.setdefault("request_timeout", 5)
        options.setdefault("backoff", Backoff(initial=0.05, maximum=0.5))
        connection = DeribitConnection(simulator.url, **options)
        opened.append(connection)
        connection.start()
        return connection

    yield factory
    await asyncio.gather(*(connection.close() for connection in opened))


class Ticks:
    """Collects index ticks per channel from a connection's notifications."""

    def __init__(self, connection: DeribitConnection) -> None:
        self.by_channel: dict[str, list[int]] = {}
        connection.on_notification(self.add)

    def add(self, channel: str, data: Any) -> None:
        self.by_channel.setdefault(channel, []).append(data["timestamp"])

    def count(self, channel: str) -> int:
        return len(self.by_channel.get(channel, []))


async def test_calls_return_results_and_typed_errors(open_connection: Factory) -> None:
    connection = await open_connection()
    price = await connection.call("public/get_index_price", {"index_name": "btc_usd"})
    assert price["index_price"] > 0
    assert isinstance(await connection.call("public/get_time"), int)
    with pytest.raises(MethodNotFound):
        await connection.call("public/get_index", {"currency": "BTC"})
    with pytest.raises(InvalidParams) as caught:
        await connection.call("public/get_index_price", {"index_name": "nope_usd"})
    assert caught.value.reason == "Invalid params: invalid index (index_name)"
    assert connection.connected


async def test_concurrent_requests_answered_out_of_order_are_matched_by_id(
    open_connection: Factory, simulator: Simulator
) -> None:
    connection = await open_connection()
    await connection.wait_ready()
    # Every reply waits a random 0-200 ms, so later requests are often answered first.
    await sim_control(simulator, ("sim/set_latency", {"ms": 0, "jitter_ms": 200}))
    names = ["btc_usd", "eth_usd", "sol_usdc", "xrp_usdc", "ada_usdc"] * 8
    finished: list[int] = []

    async def ask(position: int, name: str) -> dict[str, float]:
        result: dict[str, float] = await connection.call(
            "public/get_index_price", {"index_name": name}
        )
        finished.append(position)
        return result

    results = await asyncio.gather(*(ask(i, name) for i, name in enumerate(names)))
    assert finished != sorted(finished), "the answers did not come out of order"
    for name, result in zip(names, results, strict=True):
        assert result["index_price"] == pytest.approx(simulator.price(name), rel=0.05)


async def test_a_late_answer_times_out_and_the_connection_carries_on(
    open_connection: Factory, simulator: Simulator
) -> None:
    connection = await open_connection()
    await connection.wait_ready()
    await sim_control(simulator, ("sim/set_latency", {"ms": 400}))
    with pytest.raises(RequestTimeout):
        await connection.call("public/get_time", timeout=0.1)
    await sim_control(simulator, ("sim/set_latency", {"ms": 0}))
    assert isinstance(await connection.call("public/get_time"), int)
    assert connection.connected


async def test_heartbeats_are_answered_for_many_cycles(
    open_connection: Factory, simulator: Simulator
) -> None:
    connection = await open_connection()
    await connection.wait_ready()
    await eventually(lambda: simulator.calls["public/test"] >= 6, what="six test_requests answered")
    assert connection.connected
    assert connection.reconnects == 0
    assert simulator.calls["public/set_heartbeat"] == 1


async def test_subscriptions_deliver_ticks_and_are_never_doubled(
    open_connection: Factory, simulator: Simulator
) -> None:
    connection = await open_connection()
    ticks = Ticks(connection)
    channels = ["deribit_price_index.btc_usd", "deribit_price_index.eth_usd"]
    await connection.wait_ready()
    assert sorted(await connection.subscribe(channels)) == channels
    assert await connection.subscribe(channels) == []  # already in the set: nothing sent
    assert simulator.calls["public/subscribe"] == 1
    await eventually(lambda: all(ticks.count(c) >= 3 for c in channels), what="ticks")
    await connection.unsubscribe(["deribit_price_index.eth_usd"])
    assert connection.channels == {"deribit_price_index.btc_usd"}


async def test_unknown_channels_leave_the_set(open_connection: Factory) -> None:
    connection = await open_connection()
    await connection.wait_ready()
    acked = await connection.subscribe(["deribit_price_index.btc_usd", "deribit_price_index.zzz"])
    assert acked == ["deribit_price_index.btc_usd"]
    assert connection.channels == {"deribit_price_index.btc_usd"}


async def _reconnects_with_everything_restored(
    open_connection: Factory, simulator: Simulator, fault: str, params: dict[str, Any]
) -> None:
    connection = await open_connection(credentials=ALICE)
    states: list[ConnectionState] = []
    connection.on_state(states.append)
    ticks = Ticks(connection)
    channels = ["deribit_price_index.btc_usd", "deribit_price_index.eth_usd"]
    await connection.wait_ready()
    await connection.subscribe(channels)
    await eventually(lambda: all(ticks.count(c) >= 2 for c in channels), what="first ticks")

    await sim_control(simulator, (fault, params))
    await eventually(lambda: connection.reconnects == 1 and connection.connected, what="back")
    before = {c: ticks.count(c) for c in channels}
    await eventually(
        lambda: all(ticks.count(c) >= before[c] + 3 for c in channels), what="ticks resume"
    )

    assert states[-2:] == [ConnectionState.RECONNECTING, ConnectionState.CONNECTED]
    assert simulator.calls["public/auth"] == 2  # re-authenticated on the new socket
    assert simulator.calls["public/set_heartbeat"] == 2
    assert simulator.calls["public/subscribe"] == 2  # one call per socket, the whole set
    assert connection.channels == set(channels)
    for channel in channels:
        stamps = ticks.by_channel[channel]
        assert stamps == sorted(set(stamps)), "a tick arrived twice or out of order"
    summary = await connection.call("private/get_account_summary", {"currency": "BTC"})
    assert summary["currency"] == "BTC"


async def test_reconnect_after_dropped_connections(
    open_connection: Factory, simulator: Simulator
) -> None:
    await _reconnects_with_everything_restored(
        open_connection, simulator, "sim/drop_connections", {}
    )


async def test_reconnect_after_a_silent_socket(
    open_connection: Factory, simulator: Simulator
) -> None:
    await _reconnects_with_everything_restored(
        open_connection, simulator, "sim/go_silent", {"seconds": 5}
    )


async def test_a_socket_that_dies_during_its_set_up_is_replaced_at_once(
    open_connection: Factory, simulator: Simulator
) -> None:
    # Every frame 3 s late, the set-up's answers too: the watchdog finds each new socket silent
    # and aborts it within its silence timeout (2.5 s here).
    await sim_control(simulator, ("sim/set_latency", {"ms": 3000}))
    await open_connection(request_timeout=60)
    # The set-up's request fails with its socket, and another socket is tried: not only once the
    # 60 s request timeout has run out.
    await eventually(
        lambda: simulator.calls["public/set_heartbeat"] >= 2, timeout=10, what="a second socket"
    )


async def test_wrong_credentials_fail_once_with_one_auth_on_the_wire(
    open_connection: Factory, simulator: Simulator
) -> None:
    connection = await open_connection(credentials=Credentials("sim-alice", "wrong"))
    with pytest.raises(InvalidCredentials) as caught:
        await connection.wait_ready()
    assert caught.value.code == 13004
    assert caught.value.reason == "invalid_credentials"
    assert connection.closed
    with pytest.raises(InvalidCredentials):
        await connection.call("public/get_time")
    assert simulator.calls["public/auth"] == 1
    assert simulator.calls["public/set_heartbeat"] == 1  # no second socket was opened


async def test_client_signature_is_accepted_and_a_wrong_one_refused(
    open_connection: Factory, simulator: Simulator
) -> None:
    signed = await open_connection(
        credentials=Credentials("sim-alice", "sim-alice-secret", grant_type="client_signature")
    )
    await signed.wait_ready()
    assert signed.token is not None
    summary = await signed.call("private/get_account_summary", {"currency": "ETH"})
    assert summary["currency"] == "ETH"

    forged = await open_connection(
        credentials=Credentials("sim-alice", "not-her-secret", grant_type="client_signature")
    )
    with pytest.raises(Unauthorized):
        await forged.wait_ready()
    assert simulator.calls["public/auth"] == 2


async def test_the_token_is_refreshed_before_it_expires(
    open_connection: Factory, simulator: Simulator
) -> None:
    connection = await open_connection(
        credentials=Credentials("sim-alice", "sim-alice-secret", scope="expires:2")
    )
    await connection.wait_ready()
    first = connection.token
    assert first is not None
    assert first.expires_in == 2
    await eventually(lambda: connection.token is not first, timeout=5, what="refresh")
    assert simulator.calls["public/auth"] == 2
    await eventually(
        lambda: asyncio.get_running_loop().time() > first.issued_at + 2.2, what="first expired"
    )
    summary = await connection.call("private/get_account_summary", {"currency": "BTC"})
    assert summary["currency"] == "BTC"
    assert connection.reconnects == 0


async def test_authenticating_an_open_socket_sends_one_auth(
    open_connection: Factory, simulator: Simulator
) -> None:
    connection = await open_connection()
    await connection.wait_ready()
    token = await connection.authenticate(ALICE)
    assert token.connection_bound
    with pytest.raises(InvalidCredentials):
        await connection.authenticate(Credentials("sim-bob", "wrong"))
    assert connection.credentials == ALICE  # a refused key is not kept
    assert simulator.calls["public/auth"] == 2


async def test_refused_connections_are_retried_with_backoff(
    open_connection: Factory, simulator: Simulator
) -> None:
    connection = await open_connection()
    await connection.wait_ready()
    await sim_control(
        simulator, ("sim/refuse_connections", {"seconds": 1}), ("sim/drop_connections", {})
    )
    await eventually(lambda: connection.reconnects >= 2, what="refused attempts")
    await connection.wait_ready(timeout=10)
    # A refusal window of 1 s with backoff from 50 ms doubling: a handful of attempts, no storm.
    assert connection.reconnects <= 8


def simulator_channels(simulator: Simulator) -> set[str]:
    """Every channel the simulator has subscribed, over all its sockets."""
    sessions = simulator._state.sessions.values()  # ground truth
    return set().union(*(session.subscriptions for session in sessions))


async def test_channel_changes_made_while_a_reconnect_is_set_up_reach_deribit(
    open_connection: Factory, simulator: Simulator
) -> None:
    btc, eth, sol = (f"deribit_price_index.{name}" for name in ("btc_usd", "eth_usd", "sol_usdc"))
    # A heartbeat far longer than the latency below, so the simulator never takes a late
    # test_request answer for a dead socket.
    connection = await open_connection(heartbeat_interval=5)
    ticks = Ticks(connection)
    await connection.wait_ready()
    await connection.subscribe([btc, eth])
    # Every answer now takes a second, so the set-up of the next socket is slow enough to act in.
    await sim_control(simulator, ("sim/set_latency", {"ms": 1000}))
    replays = simulator.calls["public/subscribe"]
    await sim_control(simulator, ("sim/drop_connections", {}))
    await eventually(
        lambda: simulator.calls["public/subscribe"] > replays,
        what="the new socket's set-up sent its replay of the set",
    )
    assert not connection.connected  # the replay's answer is still on its way

    await connection.subscribe([sol])
    await connection.unsubscribe([eth])

    await connection.wait_ready()
    assert connection.channels == {btc, sol}
    assert simulator_channels(simulator) == {btc, sol}
    await eventually(lambda: ticks.count(sol) >= 3, timeout=5, what="ticks of the new channel")
    eth_ticks, btc_ticks = ticks.count(eth), ticks.count(btc)
    await eventually(lambda: ticks.count(btc) >= btc_ticks + 3, timeout=5, what="more ticks")
    assert ticks.count(eth) == eth_ticks, "the unsubscribed channel still ticks"


async def test_a_caller_cancelled_while_closing_stays_cancelled(
    open_connection: Factory,
) -> None:
    connection = await open_connection()
    await connection.wait_ready()
    closing = asyncio.create_task(connection.close())
    await asyncio.sleep(0)  # one loop turn: `closing` is now waiting for the supervisor to end
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert closing.cancelled()
    assert connection.closed


async def test_a_transient_auth_refusal_is_final_for_authenticate_only(
    open_connection: Factory, simulator: Simulator
) -> None:
    await sim_control(
        simulator, ("sim/fail_requests", {"code": 12003, "seconds": 60, "methods": ["public/auth"]})
    )
    signing_in = await open_connection()
    with pytest.raises(LoginOverLimit):
        await signing_in.authenticate(ALICE)
    assert simulator.calls["public/auth"] == 1  # answered once, never retried
    assert signing_in.closed

    # A long-lived connection with its own key rides the refusal out under backoff.
    keeper = await open_connection(credentials=ALICE)
    await eventually(lambda: simulator.calls["public/auth"] >= 3, what="retried auths")
    assert not keeper.closed
    await sim_control(simulator, ("sim/fail_requests", {"code": 12003, "seconds": 0}))
    await keeper.wait_ready(timeout=5)


async def test_a_subscribe_without_credit_in_time_keeps_the_socket_and_leaves_the_set(
    open_connection: Factory,
) -> None:
    # Credit for the subscribe never came within the wait: it was never sent. Every channel of
    # the socket is fine, so the socket stays; the channel is not in the set (not subscribed).
    budget = CreditBudget(max_wait=0.01)
    connection = await open_connection(budget=budget)
    await connection.wait_ready()
    while True:  # spend the subscribe bucket
        try:
            await budget.acquire("public/subscribe")
        except CreditTimeout:
            break
    socket = connection._ws
    with pytest.raises(CreditTimeout):
        await connection.subscribe(["deribit_price_index.eth_usd"])
    assert "deribit_price_index.eth_usd" not in connection.channels
    assert connection._ws is socket and connection.connected
