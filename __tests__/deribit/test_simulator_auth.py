"""`public/auth` grants and scopes, token binding, private methods (reference §3, §4)."""

import asyncio
import hashlib
import hmac
import re
import time

import pytest

TOKEN = re.compile(r"^\d{13}\.[0-9a-zA-Z]{8}\.\S+$")
INVALID_TOKEN = {"message": "unauthorized", "code": 13009, "data": {"reason": "invalid_token"}}
INVALID_CREDENTIALS = {"message": "invalid_credentials", "code": 13004}


def signature(secret: str, timestamp: int, nonce: str, data: str = "") -> str:
    """Signed here from the reference's formula, not with the client's signer: a mistake there
    must not pass here (test_signature_vectors.py pins the formula with fixed vectors)."""
    message = f"{timestamp}\n{nonce}\n{data}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed(client_id: str, secret: str, *, nonce: str = "n0nce", age_ms: int = 0) -> dict:
    timestamp = int(time.time() * 1000) - age_ms
    return {
        "grant_type": "client_signature",
        "client_id": client_id,
        "timestamp": timestamp,
        "nonce": nonce,
        "data": "",
        "signature": signature(secret, timestamp, nonce),
    }


async def test_client_credentials_result_fields(simulator, connect):
    client = await connect(simulator)
    result = await client.auth(state="mine")
    assert set(result) == {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "scope",
        "enabled_features",
        "state",
    }
    assert TOKEN.match(result["access_token"]) and TOKEN.match(result["refresh_token"])
    assert result["token_type"] == "bearer"
    assert result["expires_in"] == 31_536_000
    assert result["scope"] == "connection mainaccount"
    assert result["enabled_features"] == []
    assert result["state"] == "mine"
    bob = await client.auth("sim-bob")
    assert bob["scope"] == "connection"  # a subaccount key: no mainaccount


@pytest.mark.parametrize(
    "params",
    [
        {"client_id": "sim-alice", "client_secret": "wrong"},
        {"client_id": "nobody", "client_secret": "sim-alice-secret"},
    ],
)
async def test_wrong_credentials_are_13004(simulator, connect, params):
    client = await connect(simulator)
    error = await client.error("public/auth", {"grant_type": "client_credentials", **params})
    assert error == INVALID_CREDENTIALS


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({}, "grant_type"),
        ({"grant_type": "client_credentials", "client_id": "sim-alice"}, "client_secret"),
        ({"grant_type": "client_signature", "client_id": "sim-alice"}, "timestamp"),
        ({"grant_type": "refresh_token"}, "refresh_token"),
    ],
)
async def test_missing_auth_params_are_named(simulator, connect, params, param):
    client = await connect(simulator)
    error = await client.error("public/auth", params)
    assert error == {
        "message": "Invalid params",
        "code": -32602,
        "data": {"reason": "value is required", "param": param},
    }


async def test_client_signature_right_and_wrong(simulator, connect):
    client = await connect(simulator)
    result = await client.result("public/auth", signed("sim-alice", "sim-alice-secret"))
    assert result["scope"] == "connection mainaccount"
    wrong = await client.error("public/auth", signed("sim-alice", "not-the-secret", nonce="x1"))
    assert wrong["code"] == 13009 and wrong["message"] == "unauthorized"
    stale = await client.error(
        "public/auth", signed("sim-alice", "sim-alice-secret", nonce="x2", age_ms=61_000)
    )
    assert stale["code"] == 13009
    unknown = await client.error("public/auth", signed("nobody", "sim-alice-secret", nonce="x3"))
    assert unknown == INVALID_CREDENTIALS


async def test_a_signature_nonce_is_single_use(simulator, connect):
    client = await connect(simulator)
    params = signed("sim-alice", "sim-alice-secret", nonce="once")
    await client.result("public/auth", params)
    replay = await client.error("public/auth", params)
    assert replay["code"] == 13009
    later = await client.error("public/auth", signed("sim-alice", "sim-alice-secret", nonce="once"))
    assert later["code"] == 13009


async def test_private_method_uses_the_sockets_own_auth_or_a_token(simulator, connect):
    client = await connect(simulator)
    assert await client.error("private/get_account_summary", {"currency": "BTC"}) == INVALID_TOKEN
    token = (await client.auth())["access_token"]
    assert (await client.result("private/get_account_summary", {"currency": "BTC"}))["balance"]
    explicit = {"currency": "BTC", "access_token": token}
    assert (await client.result("private/get_account_summary", explicit))["currency"] == "BTC"
    bogus = {"currency": "BTC", "access_token": "1.abcdefgh.nothing"}
    assert await client.error("private/get_account_summary", bogus) == INVALID_TOKEN


async def test_connection_token_is_rejected_on_another_socket(simulator, connect):
    first, second = await connect(simulator), await connect(simulator)
    token = (await first.auth())["access_token"]
    error = await second.error(
        "private/get_account_summary", {"currency": "BTC", "access_token": token}
    )
    assert error == INVALID_TOKEN


async def test_connection_token_dies_with_its_socket_but_session_token_does_not(simulator, connect):
    first = await connect(simulator)
    connection_token = (await first.auth())["access_token"]
    session = await first.auth(scope="session:svc")
    assert session["scope"] == "session:svc mainaccount"
    await first.ws.close()
    second = await connect(simulator)
    ok = {"currency": "ETH", "access_token": session["access_token"]}
    assert (await second.result("private/get_account_summary", ok))["currency"] == "ETH"
    dead = {"currency": "ETH", "access_token": connection_token}
    assert await second.error("private/get_account_summary", dead) == INVALID_TOKEN


async def test_refresh_replaces_the_pair_and_stays_on_its_socket(simulator, connect):
    client, other = await connect(simulator), await connect(simulator)
    old = await client.auth()
    foreign = await other.error(
        "public/auth", {"grant_type": "refresh_token", "refresh_token": old["refresh_token"]}
    )
    assert foreign == INVALID_TOKEN
    new = await client.result(
        "public/auth", {"grant_type": "refresh_token", "refresh_token": old["refresh_token"]}
    )
    assert new["access_token"] != old["access_token"]
    assert new["scope"] == old["scope"]
    stale = {"currency": "BTC", "access_token": old["access_token"]}
    assert await client.error("private/get_account_summary", stale) == INVALID_TOKEN
    again = {"grant_type": "refresh_token", "refresh_token": old["refresh_token"]}
    assert await client.error("public/auth", again) == INVALID_TOKEN
    assert await client.result("private/get_account_summary", {"currency": "BTC"})


async def test_session_refresh_works_from_any_socket(simulator, connect):
    first, second = await connect(simulator), await connect(simulator)
    old = await first.auth(scope="session:svc")
    new = await second.result(
        "public/auth", {"grant_type": "refresh_token", "refresh_token": old["refresh_token"]}
    )
    assert new["scope"] == "session:svc mainaccount"
    assert await second.result("private/get_account_summaries")


async def test_expires_scope_sets_the_lifetime(simulator, connect):
    client = await connect(simulator)
    result = await client.auth(scope="expires:1")
    assert result["expires_in"] == 1
    assert result["scope"] == "connection mainaccount expires:1"
    assert await client.result("private/get_account_summary", {"currency": "BTC"})
    await asyncio.sleep(1.05)  # the lifetime itself is what is tested
    assert await client.error("private/get_account_summary", {"currency": "BTC"}) == INVALID_TOKEN


async def test_sixteen_sessions_per_key(simulator, connect):
    client = await connect(simulator)
    for n in range(16):
        await client.auth(scope=f"session:s{n}")
    await client.auth(scope="session:s3")  # joining an existing session is fine
    error = await client.error(
        "public/auth",
        {
            "grant_type": "client_credentials",
            "client_id": "sim-alice",
            "client_secret": "sim-alice-secret",
            "scope": "session:s16",
        },
    )
    assert error["code"] == 10001
    assert (await client.auth("sim-bob", scope="session:s16"))["scope"] == "session:s16"


async def test_account_summary_fields(simulator, connect):
    client = await connect(simulator)
    await client.auth()
    plain = await client.result("private/get_account_summary", {"currency": "BTC"})
    for field in ("currency", "balance", "equity", "margin_balance", "available_funds",
                  "available_withdrawal_funds", "initial_margin", "maintenance_margin",
                  "total_pl", "margin_model", "limits"):  # fmt: skip
        assert field in plain, field
    assert not {"id", "email", "username", "type"} & set(plain)
    assert plain["limits"]["non_matching_engine"] == {"rate": 20, "burst": 100}
    extended = await client.result(
        "private/get_account_summary", {"currency": "usdc", "extended": True}
    )
    assert extended["currency"] == "USDC"
    assert (extended["id"], extended["username"], extended["email"], extended["type"]) == (
        1001,
        "alice",
        "alice@example.com",
        "main",
    )
    assert isinstance(extended["creation_timestamp"], int)
    assert extended["system_name"] == "alice"
    again = await client.result("private/get_account_summary", {"currency": "BTC"})
    assert again["balance"] == plain["balance"]


async def test_account_summary_errors(simulator, connect):
    client = await connect(simulator)
    await client.auth()
    error = await client.error("private/get_account_summary", {"currency": "DOGE"})
    assert error["data"] == {"reason": "invalid currency", "param": "currency"}
    error = await client.error("private/get_account_summary", {})
    assert error["data"] == {"reason": "value is required", "param": "currency"}


async def test_account_summaries(simulator, connect):
    client = await connect(simulator)
    await client.auth("sim-bob")
    plain = await client.result("private/get_account_summaries")
    assert set(plain) == {"summaries"}
    currencies = [s["currency"] for s in plain["summaries"]]
    assert {"BTC", "ETH", "USDC", "USDT"} <= set(currencies)
    assert all("limits" in s and "balance" in s for s in plain["summaries"])
    extended = await client.result("private/get_account_summaries", {"extended": True})
    assert (extended["id"], extended["type"], extended["username"]) == (1002, "subaccount", "bob")


async def test_logout_closes_gracefully_and_kills_the_token(simulator, connect):
    client = await connect(simulator)
    session = await client.auth(scope="session:gone")
    await client.send({"jsonrpc": "2.0", "id": 9, "method": "private/logout", "params": {}})
    closed = await client.closed()
    assert closed.rcvd is not None and closed.rcvd.code == 1000
    assert not [f for f in client.pending if f.get("id") == 9]  # no answer body
    other = await connect(simulator)
    params = {"currency": "BTC", "access_token": session["access_token"]}
    assert await other.error("private/get_account_summary", params) == INVALID_TOKEN


async def test_private_subscribe_needs_auth(simulator, connect):
    client = await connect(simulator)
    channels = {"channels": ["deribit_price_index.btc_usd"]}
    assert await client.error("private/subscribe", channels) == INVALID_TOKEN
    await client.auth()
    assert await client.result("private/subscribe", channels) == channels["channels"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"grant_type": "password"}, "grant_type"),
        ({"scope": "expires:soon"}, "scope"),
        ({"scope": "session:"}, "scope"),
    ],
)
async def test_bad_grant_type_or_scope_is_32602(simulator, connect, params, param):
    client = await connect(simulator)
    credentials = {
        "grant_type": "client_credentials",
        "client_id": "sim-alice",
        "client_secret": "sim-alice-secret",
    }
    error = await client.error("public/auth", {**credentials, **params})
    assert error["code"] == -32602 and error["data"]["param"] == param
