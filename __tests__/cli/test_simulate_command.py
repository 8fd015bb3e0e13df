"""`cryptomarket simulate` as a user starts it: a real process, used over a real socket."""

import asyncio
import json
import re
import signal
import sys
from pathlib import Path

from websockets.asyncio.client import connect


async def _start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cryptomarket",
        "simulate",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _listening_url(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(30):
        while line := (await process.stdout.readline()).decode():
            if found := re.search(r"listening on (ws://\S+)", line):
                return found.group(1)
    raise AssertionError("the simulator never said where it listens")


async def test_simulate_serves_deribit_and_stops_on_sigterm(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.json"
    accounts.write_text(
        json.dumps(
            [
                {
                    "client_id": "desk-1",
                    "client_secret": "desk-1-secret",
                    "id": 7,
                    "username": "desk",
                    "email": "desk@example.com",
                    "type": "main",
                }
            ]
        )
    )
    process = await _start("--port", "0", "--seed", "3", "--accounts", str(accounts))
    try:
        url = await _listening_url(process)
        assert url.endswith("/ws/api/v2")
        async with connect(url) as ws:
            auth = {"grant_type": "client_credentials", "client_id": "desk-1"}
            auth["client_secret"] = "desk-1-secret"
            await ws.send(
                json.dumps({"jsonrpc": "2.0", "id": 1, "method": "public/auth", "params": auth})
            )
            answer = json.loads(await ws.recv())
            assert answer["result"]["token_type"] == "bearer"
            await ws.send(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 2,
                        "method": "private/get_account_summary",
                        "params": {"currency": "BTC", "extended": True},
                    }
                )
            )
            summary = json.loads(await ws.recv())["result"]
            assert (summary["id"], summary["username"]) == (7, "desk")
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_bad_accounts_file_is_one_line(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.json"
    accounts.write_text('[{"client_id": "x"}]')
    process = await _start("--port", "0", "--accounts", str(accounts))
    assert process.stdout is not None
    async with asyncio.timeout(30):
        output = (await process.stdout.read()).decode()
        assert await process.wait() == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cryptomarket simulate: ")
    assert "Traceback" not in output
