"""Fixtures shared by the whole suite.

- `postgres_server`: one real PostgreSQL on a free port of 127.0.0.1 for the session.
- `redis_server`: one real Redis (no password) on a free port of 127.0.0.1 for the session.
- `simulator`, `simulator_factory`: a running Deribit simulator per test (see simulated.py).

Each starts only when a test first asks for it and is stopped at the end of the session. A test
may stop, kill or restart one (it comes back on the same port), but must leave it running, in a
`finally`, for the tests after it.
"""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from __tests__.servers import PostgresServer, RedisServer
from __tests__.service import Service, running_service
from __tests__.simulated import simulator, simulator_factory
from cryptomarket.deribit.simulator import Simulator

__all__ = ["simulator", "simulator_factory"]  # the Deribit simulator, for every test package

# Servers


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.close()


# The service


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cryptomarket.sqlite3'}"


@pytest.fixture
async def service(simulator: Simulator, sqlite_url: str) -> AsyncIterator[Service]:
    """The service on SQLite against the simulator (ticks every 50 ms)."""
    async with running_service(simulator, sqlite_url) as running:
        yield running
