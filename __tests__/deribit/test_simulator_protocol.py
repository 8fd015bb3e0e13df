"""The JSON-RPC envelope, error objects and handshake rules (reference §2, §8, §9)."""

import json

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

RESPONSE_KEYS = {"jsonrpc", "id", "result", "testnet", "usIn", "usOut", "usDiff"}


def assert_envelope(frame: dict, *, has_id: bool = True, error: bool = False) -> None:
    keys = (RESPONSE_KEYS - {"result"}) | ({"error"} if error else {"result"})
    assert set(frame) == (keys if has_id else keys - {"id"}), frame
    assert frame["jsonrpc"] == "2.0"
    assert frame["testnet"] is True
    for field in ("usIn", "usOut", "usDiff"):
        assert type(frame[field]) is int
    assert frame["usOut"] >= frame["usIn"] > 1_500_000_000_000_000  # microseconds
    assert frame["usDiff"] == frame["usOut"] - frame["usIn"]


async def test_success_envelope_echoes_int_and_string_ids(simulator, connect):
    client = await connect(simulator)
    frame = await client.request("public/get_time", id=8066)
    assert_envelope(frame)
    assert frame["id"] == 8066
    assert type(frame["result"]) is int and frame["result"] > 1_500_000_000_000  # milliseconds
    frame = await client.request("public/test", id="auth_42")
    assert frame["id"] == "auth_42"
    assert frame["result"] == {"version": "1.2.26"}


async def test_request_without_id_is_answered_without_id(simulator, connect):
    client = await connect(simulator)
    await client.send({"jsonrpc": "2.0", "method": "public/test", "params": {}})
    frame = await client.recv()
    assert_envelope(frame, has_id=False)
    assert frame["result"] == {"version": "1.2.26"}


async def test_error_envelope(simulator, connect):
    client = await connect(simulator)
    frame = await client.request("public/no_such_method", id=3)
    assert_envelope(frame, error=True)
    assert frame["id"] == 3
    assert frame["error"] == {"message": "Method not found", "code": -32601}
    assert simulator.errors[-32601] == 1
    assert simulator.calls["public/no_such_method"] == 1


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"id": 1.5, "method": "public/test"}'])
async def test_unparseable_frame_gets_bad_request_without_id_and_socket_stays(
    simulator, connect, text
):
    client = await connect(simulator)
    await client.send(text)
    frame = await client.recv()
    assert_envelope(frame, has_id=False, error=True)
    assert frame["error"] == {"message": "bad_request", "code": 11050, "data": "invalid json"}
    assert await client.result("public/test") == {"version": "1.2.26"}


async def test_frame_over_32_kb_is_rejected_and_socket_stays(simulator, connect):
    client = await connect(simulator)
    big = {"jsonrpc": "2.0", "id": 1, "method": "public/test", "params": {"pad": "x" * 33_000}}
    await client.send(big)
    frame = await client.recv()
    assert_envelope(frame, has_id=False, error=True)
    assert frame["error"] == {"message": "request entity too large", "code": -32600}
    assert await client.result("public/test") == {"version": "1.2.26"}


async def test_missing_method_and_positional_params(simulator, connect):
    client = await connect(simulator)
    await client.send({"jsonrpc": "2.0", "id": 5, "params": {}})
    frame = await client.recv()
    assert frame["id"] == 5
    assert frame["error"]["code"] == 11050
    frame = await client.request("public/get_index_price", id=6, params=["btc_usd"])
    assert frame["error"] == {
        "message": "Invalid params",
        "code": -32602,
        "data": {"reason": "invalid format", "param": "params"},
    }


async def test_leading_slash_method_name_is_accepted(simulator, connect):
    client = await connect(simulator)
    assert await client.result("/public/test") == {"version": "1.2.26"}


async def test_public_test_can_force_an_exception(simulator, connect):
    client = await connect(simulator)
    error = await client.error("public/test", {"expected_result": "exception"})
    assert error == {"message": "internal_server_error", "code": 11094}


async def test_hello_and_get_time(simulator, connect):
    client = await connect(simulator)
    hello = await client.result("public/hello", {"client_name": "tests", "client_version": "1"})
    assert hello == {"version": "1.2.26"}
    before = await client.result("public/get_time")
    assert await client.result("public/get_time") >= before


async def test_other_paths_are_404_at_handshake(simulator):
    url = simulator.url.replace("/ws/api/v2", "/ws/api/v1")
    with pytest.raises(InvalidStatus) as caught:
        await ws_connect(url)
    assert caught.value.response.status_code == 404


async def test_url_and_port(simulator):
    assert simulator.port > 0
    assert simulator.url == f"ws://127.0.0.1:{simulator.port}/ws/api/v2"


async def test_numbers_are_plain_json(simulator, connect):
    client = await connect(simulator)
    await client.send({"jsonrpc": "2.0", "id": 1, "method": "public/get_index_price",
                       "params": {"index_name": "btc_usd"}})  # fmt: skip
    raw = await client.ws.recv()
    frame = json.loads(raw)
    assert isinstance(frame["result"]["index_price"], float)
