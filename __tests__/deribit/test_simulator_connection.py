"""Connection rules: heartbeat, credits, the per-IP cap (reference §7, §8)."""

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from __tests__.helpers import eventually
from cryptomarket.deribit.credits import CreditLimits


async def test_heartbeat_frames_and_interval_checks(simulator, connect):
    client = await connect(simulator)
    error = await client.error("public/set_heartbeat", {"interval": 0.1})
    assert error["code"] == -32602 and error["data"]["param"] == "interval"
    error = await client.error("public/set_heartbeat", {})
    assert error["data"] == {"reason": "value is required", "param": "interval"}
    assert await client.result("public/set_heartbeat", {"interval": 0.5}) == "ok"
    frame = await client.heartbeat()
    assert frame == {"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}}


async def test_unanswered_test_request_closes_with_4000(simulator, connect):
    client = await connect(simulator)
    await client.result("public/set_heartbeat", {"interval": 0.5})
    await client.heartbeat()
    closed = await client.closed()
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (4000, "heartbeat close")


async def test_a_socket_answering_test_requests_survives(simulator, connect):
    client = await connect(simulator)
    await client.result("public/set_heartbeat", {"interval": 0.5})
    for _ in range(4):
        await client.heartbeat()
        assert await client.result("public/test") == {"version": "1.2.26"}
    assert simulator.open_connections == 1


async def test_disable_heartbeat_stops_test_requests(simulator, connect):
    client = await connect(simulator)
    await client.result("public/set_heartbeat", {"interval": 0.5})
    await client.heartbeat()
    await client.result("public/test")
    assert await client.result("public/disable_heartbeat") == "ok"
    with pytest.raises(TimeoutError):
        await client.heartbeat(timeout=1.2)  # two intervals: neither a test_request nor a close
    assert await client.result("public/test")


async def test_credit_exhaustion_answers_10028_then_closes(simulator_factory, connect):
    tiny = CreditLimits(cost=500, cap=1500, refill_per_second=1)
    simulator = await simulator_factory(default_limits=tiny)
    client = await connect(simulator)
    for _ in range(3):
        await client.result("public/get_time")
    assert await client.result("sim/set_latency", {"ms": 0}) == "ok"  # control calls are free
    error = await client.error("public/get_time")
    assert error == {"message": "too_many_requests", "code": 10028}
    closed = await client.closed()
    assert closed.rcvd is not None and closed.rcvd.code == 1008
    assert simulator.errors[10028] == 1


async def test_credits_are_per_ip_until_authenticated_then_per_account(simulator_factory, connect):
    tiny = CreditLimits(cost=500, cap=1500, refill_per_second=1)
    simulator = await simulator_factory(default_limits=tiny)
    first, second = await connect(simulator), await connect(simulator)
    await first.result("public/get_time")
    await second.result("public/get_time")
    await first.auth()  # the third request of this IP; from now on alice's bucket
    for _ in range(3):
        await first.result("public/get_time")
    assert (await second.error("public/get_time"))["code"] == 10028  # the IP's 4th


async def test_subscribe_has_its_own_bucket(simulator_factory, connect):
    tiny = CreditLimits(cost=3000, cap=6000, refill_per_second=1)
    simulator = await simulator_factory(subscribe_limits=tiny)
    client = await connect(simulator)
    channels = {"channels": ["deribit_price_index.btc_usd"]}
    await client.result("public/subscribe", channels)
    await client.result("public/subscribe", channels)
    await client.result("public/get_time")
    assert (await client.error("public/subscribe", channels))["code"] == 10028


async def test_per_ip_connection_cap_is_429_at_handshake(simulator_factory, connect):
    simulator = await simulator_factory(max_connections_per_ip=2)
    first = await connect(simulator)
    await connect(simulator)
    with pytest.raises(InvalidStatus) as caught:
        await ws_connect(simulator.url)
    assert caught.value.response.status_code == 429
    await first.ws.close()
    await eventually(lambda: simulator.open_connections == 1, what="one socket left")
    await connect(simulator)


async def test_stop_closes_every_connection_and_is_idempotent(simulator_factory, connect):
    simulator = await simulator_factory()
    client = await connect(simulator)
    await client.result("public/test")
    await simulator.stop()
    closed = await client.closed()
    assert closed.rcvd is not None and closed.rcvd.code == 1001
    await simulator.stop()
    assert simulator.open_connections == 0
