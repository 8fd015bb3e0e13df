"""Accounts files (`--accounts`), settings checks, and `run()`."""

import asyncio
import json
import logging

import pytest
from websockets.asyncio.client import connect as ws_connect

from __tests__.helpers import eventually
from cryptomarket.deribit.simulator import (
    DEFAULT_ACCOUNTS,
    Account,
    SimulatorConfig,
    load_accounts,
    run,
)

ENTRY = {
    "client_id": "k1",
    "client_secret": "s1",
    "id": 7,
    "username": "carol",
    "email": "carol@example.com",
    "type": "subaccount",
}


def write(tmp_path, content) -> str:
    path = tmp_path / "accounts.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_load_accounts(tmp_path):
    accounts = load_accounts(write(tmp_path, [ENTRY]))
    assert accounts == [Account("k1", "s1", 7, "carol", "carol@example.com", "subaccount")]
    assert "s1" not in repr(accounts[0])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"client_id": "k1"}, "expected a non-empty JSON list"),
        ([], "expected a non-empty JSON list"),
        (["k1"], "entry 0: expected an object"),
        ([{k: v for k, v in ENTRY.items() if k != "email"}], "entry 0: missing email"),
        ([{**ENTRY, "extra": 1}], "entry 0: unknown extra"),
        ([{**ENTRY, "id": "7"}], "entry 0: id must be a positive integer"),
        ([{**ENTRY, "client_secret": ""}], "entry 0: client_secret must be a non-empty string"),
        ([{**ENTRY, "type": "admin"}], 'entry 0: type must be "main" or "subaccount"'),
        ([ENTRY, {**ENTRY, "id": 8}], "duplicate client_id k1"),
    ],
)
def test_bad_accounts_files_say_what_is_wrong_in_one_line(tmp_path, content, message):
    with pytest.raises(ValueError, match=message) as caught:
        load_accounts(write(tmp_path, content))
    assert "\n" not in str(caught.value)


def test_missing_accounts_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read it"):
        load_accounts(tmp_path / "absent.json")


def test_default_accounts_and_config():
    assert [(a.client_id, a.client_secret, a.id, a.type) for a in DEFAULT_ACCOUNTS] == [
        ("sim-alice", "sim-alice-secret", 1001, "main"),
        ("sim-bob", "sim-bob-secret", 1002, "subaccount"),
    ]
    config = SimulatorConfig()
    assert (config.host, config.port, config.tick_interval) == ("127.0.0.1", 8765, 1.0)
    assert config.accounts == list(DEFAULT_ACCOUNTS)
    assert config.accounts is not SimulatorConfig().accounts
    with pytest.raises(ValueError, match="tick interval"):
        SimulatorConfig(tick_interval=0)
    with pytest.raises(ValueError, match="distinct client_ids"):
        SimulatorConfig(accounts=[DEFAULT_ACCOUNTS[0], DEFAULT_ACCOUNTS[0]])


async def test_loaded_accounts_can_authenticate(tmp_path, simulator_factory, connect):
    simulator = await simulator_factory(accounts=load_accounts(write(tmp_path, [ENTRY])))
    client = await connect(simulator)
    result = await client.result(
        "public/auth",
        {"grant_type": "client_credentials", "client_id": "k1", "client_secret": "s1"},
    )
    assert result["scope"] == "connection"
    error = await client.error(
        "public/auth",
        {
            "grant_type": "client_credentials",
            "client_id": "sim-alice",
            "client_secret": "sim-alice-secret",
        },
    )
    assert error["code"] == 13004


class _Listening(logging.Handler):
    """Catches the start-up line of `run()`."""

    def __init__(self) -> None:
        super().__init__()
        self.url = asyncio.get_running_loop().create_future()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Deribit simulator listening on ") and not self.url.done():
            self.url.set_result(message.rsplit(" ", 1)[1])


async def test_run_serves_until_cancelled():
    listening = _Listening()
    logger = logging.getLogger("cryptomarket.simulator")
    logger.addHandler(listening)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        task = asyncio.create_task(run(SimulatorConfig(port=0, tick_interval=0.05)))
        async with asyncio.timeout(5):
            url = await listening.url
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/ws/api/v2")
        async with ws_connect(url) as ws:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "public/test"}))
            assert json.loads(await ws.recv())["result"] == {"version": "1.2.26"}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        logger.removeHandler(listening)
        logger.setLevel(previous)


async def test_logs_carry_no_secret_or_token(simulator, connect, caplog):
    caplog.set_level(logging.INFO, logger="cryptomarket.simulator")
    client = await connect(simulator)
    result = await client.auth(scope="session:logs")
    await client.result(
        "public/auth", {"grant_type": "refresh_token", "refresh_token": result["refresh_token"]}
    )
    await client.result("sim/set_latency", {"ms": 0})
    await client.ws.close()
    await eventually(lambda: simulator.open_connections == 0, what="socket closed")
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "authenticated" in text and "closed" in text
    for secret in ("sim-alice-secret", result["access_token"], result["refresh_token"]):
        assert secret not in text
