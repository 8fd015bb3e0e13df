"""The sim/* control methods (SPEC §8)."""

import asyncio
import time

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from __tests__.helpers import eventually

BTC = "deribit_price_index.btc_usd"


async def test_set_price_is_carried_by_the_next_tick_then_walks_on(simulator, connect):
    client = await connect(simulator)
    await client.result("public/subscribe", {"channels": [BTC]})
    await client.tick(BTC)
    params = {"index_name": "btc_usd", "price": 12345.678}
    assert await client.result("sim/set_price", params) == "ok"
    client.discard_pending()  # ticks sent before the answer came before the change
    tick = await client.tick(BTC)
    assert tick["price"] == 12345.678  # exactly, not rounded to the index's precision
    assert (tick["timestamp"], 12345.678) in simulator.history("btc_usd")
    following = [(await client.tick(BTC))["price"] for _ in range(5)]
    assert all(abs(price / 12345.678 - 1) < 0.01 for price in following)
    assert simulator.calls["sim/set_price"] == 1


@pytest.mark.parametrize(
    ("method", "params", "param"),
    [
        ("sim/set_price", {"index_name": "btc_usd", "price": -1}, "price"),
        ("sim/set_price", {"index_name": "nope", "price": 1}, "index_name"),
        ("sim/set_price", {"index_name": "btc_usd"}, "price"),
        ("sim/pause_ticks", {"seconds": "soon"}, "seconds"),
        ("sim/refuse_connections", {}, "seconds"),
        ("sim/go_silent", {"seconds": -1}, "seconds"),
        ("sim/set_latency", {"ms": True}, "ms"),
    ],
)
async def test_bad_control_params_are_32602(simulator, connect, method, params, param):
    client = await connect(simulator)
    error = await client.error(method, params)
    assert error["code"] == -32602 and error["data"]["param"] == param


async def test_pause_ticks_generates_and_records_nothing(simulator, connect):
    client = await connect(simulator)
    await client.result("public/subscribe", {"channels": [BTC]})
    await client.tick(BTC)
    paused_at = time.time() * 1000
    await client.result("sim/pause_ticks", {"seconds": 0.4})
    after = await client.wait_for(
        lambda f: (
            f.get("method") == "subscription" and f["params"]["data"]["timestamp"] > paused_at + 50
        )
    )
    resumed = after["params"]["data"]["timestamp"]
    assert resumed >= paused_at + 350
    stamps = [ts for ts, _ in simulator.history("btc_usd")]
    assert not [ts for ts in stamps if paused_at + 60 < ts < paused_at + 350]


async def test_drop_connections_aborts_the_others_without_close_frame(simulator, connect):
    control, victim = await connect(simulator), await connect(simulator)
    await victim.result("public/test")
    assert await control.result("sim/drop_connections") == "ok"
    closed = await victim.closed()
    assert closed.rcvd is None  # no close frame: a network drop
    assert await control.result("public/test")
    await eventually(lambda: simulator.open_connections == 1, what="the victim gone")


async def test_refuse_connections_is_503_for_a_while(simulator, connect):
    control = await connect(simulator)
    assert await control.result("sim/refuse_connections", {"seconds": 0.3}) == "ok"
    started = time.monotonic()
    with pytest.raises(InvalidStatus) as caught:
        await ws_connect(simulator.url)
    assert caught.value.response.status_code == 503
    assert await control.result("public/test")  # existing sockets are untouched
    while True:
        try:
            await connect(simulator)
            break
        except InvalidStatus:
            assert time.monotonic() - started < 3
            await asyncio.sleep(0.05)
    assert time.monotonic() - started >= 0.25


async def test_go_silent_sends_nothing_then_resumes(simulator, connect):
    control, quiet = await connect(simulator), await connect(simulator)
    await quiet.result("public/set_heartbeat", {"interval": 0.5})
    await quiet.result("public/subscribe", {"channels": [BTC]})
    await quiet.tick(BTC)
    assert await control.result("sim/go_silent", {"seconds": 1.2}) == "ok"
    silenced_at = time.time() * 1000
    await quiet.send({"jsonrpc": "2.0", "id": 77, "method": "public/test", "params": {}})
    quiet.discard_pending()
    # Nothing generated during the silence arrives: no ticks, no test_request, no reply to 77.
    # (Ticks stamped before the silence may still be on the wire; skip those.)
    first = await quiet.wait_for(
        lambda f: (
            f.get("method") == "subscription" and f["params"]["data"]["timestamp"] > silenced_at
        ),
        timeout=3,
    )
    assert first["params"]["data"]["timestamp"] >= silenced_at + 1100
    assert not [f for f in quiet.pending if f.get("id") == 77 or f.get("method") == "heartbeat"]
    assert simulator.calls["public/test"] == 1  # the request was read; its answer discarded
    assert await control.result("public/test")  # the caller itself is not silenced
    # The socket survived (no heartbeat close while silent) and works again.
    await quiet.heartbeat()
    assert await quiet.result("public/test") == {"version": "1.2.26"}


async def test_set_latency_delays_every_frame_in_order(simulator, connect):
    control, client = await connect(simulator), await connect(simulator)
    assert await control.result("sim/set_latency", {"ms": 300}) == "ok"
    late = await connect(simulator)  # connections opened later are delayed too
    for each in (client, late):
        started = time.monotonic()
        for n in range(5):
            await each.send({"jsonrpc": "2.0", "id": n, "method": "public/test", "params": {}})
        ids = [(await each.recv())["id"] for _ in range(5)]
        assert ids == list(range(5))
        assert time.monotonic() - started >= 0.29
    await control.result("sim/set_latency", {"ms": 0})
    started = time.monotonic()
    await client.result("public/test")
    assert time.monotonic() - started < 0.25


async def test_fail_requests_answers_maintenance_for_a_while(simulator, connect):
    client = await connect(simulator)
    await client.result("public/subscribe", {"channels": [BTC]})
    assert await client.result("sim/fail_requests", {"code": 11051, "seconds": 0.5}) == "ok"
    error = await client.error("public/get_index_price", {"index_name": "btc_usd"})
    assert error == {"code": 11051, "message": "system_maintenance"}
    await client.tick(BTC)  # the socket stays open and its channels keep ticking
    await eventually(lambda: simulator.errors[11051] >= 1)
    frame = await client.request("public/get_index_price", {"index_name": "btc_usd"})
    started = time.monotonic()
    while "error" in frame:
        assert time.monotonic() - started < 2, "maintenance did not end"
        frame = await client.request("public/get_index_price", {"index_name": "btc_usd"})
    assert frame["result"]["index_price"] > 0


async def test_fail_requests_too_many_requests_terminates_the_session(simulator, connect):
    client = await connect(simulator)
    control = await connect(simulator)
    await control.result("sim/fail_requests", {"code": 10028, "seconds": 5})
    error = await client.error("public/get_time")
    assert error == {"code": 10028, "message": "too_many_requests"}
    closed = await client.closed()
    assert closed.rcvd is not None and closed.rcvd.code == 1008
    # Only the named methods fail; the others are answered.
    await control.result(
        "sim/fail_requests", {"code": 11051, "seconds": 5, "methods": ["public/get_time"]}
    )
    other = await connect(simulator)
    assert (await other.error("public/get_time"))["code"] == 11051
    assert await other.result("public/test") == {"version": "1.2.26"}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"code": 13004, "seconds": 1}, "code"),
        ({"code": 10028}, "seconds"),
        ({"code": 10028, "seconds": 1, "methods": "public/test"}, "methods"),
    ],
)
async def test_fail_requests_checks_its_params(simulator, connect, params, param):
    client = await connect(simulator)
    error = await client.error("sim/fail_requests", params)
    assert error["code"] == -32602 and error["data"]["param"] == param


async def test_lowering_the_latency_never_reorders_ticks(simulator, connect):
    client = await connect(simulator)
    control = await connect(simulator)
    await client.result("public/subscribe", {"channels": [BTC]})
    await control.result("sim/set_latency", {"ms": 400})
    await client.tick(BTC)
    await control.result("sim/set_latency", {"ms": 0})
    stamps = [(await client.tick(BTC))["timestamp"] for _ in range(20)]
    assert stamps == sorted(stamps)
    sent = [ts for ts, _ in simulator.history("btc_usd") if stamps[0] <= ts <= stamps[-1]]
    assert stamps == sent
