"""`cryptomarket migrate` and `cryptomarket backfill`, run as a user runs them."""

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

from cryptomarket.deribit.pool import DeribitPool
from cryptomarket.deribit.simulator import Simulator


async def run(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Exit code, standard output (logs and results) and standard error (failures)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cryptomarket",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin"), **env},
    )
    async with asyncio.timeout(60):
        output, errors = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode(), errors.decode()


async def test_migrate_then_backfill_a_day_of_history(tmp_path: Path, simulator: Simulator) -> None:
    database = tmp_path / "history.sqlite3"
    env = {
        "DATABASE_URL": f"sqlite:///{database}",
        "DERIBIT_WS_URL": simulator.url,
        "DERIBIT_HEARTBEAT_INTERVAL": "1",
        "PROJECT_MODE": "testing",
    }
    code, output, _ = await run("migrate", env=env)
    assert (code, output.strip().splitlines()[-1]) == (0, "database schema is up to date")

    code, output, errors = await run("backfill", "--ticker", "eth_usd", "--range", "1d", env=env)
    assert code == 0, errors
    pool = DeribitPool(simulator.url, size=1, heartbeat_interval=1)
    try:
        points = await pool.call(
            "public/get_index_chart_data", {"index_name": "eth_usd", "range": "1d"}
        )
    finally:
        await pool.close()
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT timestamp, price FROM crypto_price_tickers WHERE ticker = 'eth_usd' "
            "ORDER BY timestamp"
        ).fetchall()
    assert len(points) > 1000  # a day of minutes
    stored_points = {timestamp for timestamp, _ in rows}
    # The current minute's point moves on between the two calls; every closed minute matches.
    assert {timestamp for timestamp, _ in points[:-1]} <= stored_points
    assert f"eth_usd: {len(rows)} points" in output

    code, _, _ = await run("backfill", "--ticker", "eth_usd", "--range", "1d", env=env)
    assert code == 0
    with sqlite3.connect(database) as connection:
        (count,) = connection.execute("SELECT count(*) FROM crypto_price_tickers").fetchone()
    assert count <= len(rows) + 1  # loading the same range again duplicates nothing


async def test_backfill_refuses_bad_input_in_one_line(tmp_path: Path, simulator: Simulator) -> None:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}",
        "DERIBIT_WS_URL": simulator.url,
        "DERIBIT_HEARTBEAT_INTERVAL": "1",
        "PROJECT_MODE": "testing",
    }
    await run("migrate", env=env)
    code, _, output = await run("backfill", "--ticker", "zzz_usd", "--range", "1h", env=env)
    assert (code, output.strip()) == (
        2,
        "cryptomarket backfill: Deribit has no index named 'zzz_usd'",
    )
    code, _, output = await run("backfill", "--ticker", "btc_usd", "--range", "5y", env=env)
    assert code == 2
    assert output.strip() == "cryptomarket backfill: --range must be one of 1h, 1d, 2d, 1m, 1y, all"


async def test_migrate_names_the_problem_without_a_traceback(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgresql://nobody:secret-pw@127.0.0.1:1/none"}
    code, logs, output = await run("migrate", env=env)
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cryptomarket migrate: cannot migrate the postgresql database:")
    assert "secret-pw" not in output + logs
    assert "Traceback" not in output + logs
