"""Databases for the fault suite: SQLite by default; a test parametrized with `database_kind`
runs on PostgreSQL too (a fresh database of the session's server)."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def database_kind() -> str:
    return "sqlite"


@pytest.fixture
def database_url(
    request: pytest.FixtureRequest, database_kind: str, tmp_path: Path
) -> Iterator[str]:
    if database_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'cryptomarket.sqlite3'}"
        return
    server = request.getfixturevalue("postgres_server")
    name = f"faults_{uuid.uuid4().hex[:12]}"
    server.create_database(name)
    try:
        yield server.url(database=name)
    finally:
        if not server.running:
            server.start()
        server.drop_database(name)
