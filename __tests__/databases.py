"""A fresh, empty database of either kind, for fixtures that run a test on both."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def fresh_database_url(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Iterator[str]:
    """A new SQLite file, or a new database on the session's PostgreSQL server (dropped after;
    a server the test left stopped is started again first)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'cryptomarket.sqlite3'}"
        return
    server = request.getfixturevalue("postgres_server")
    name = f"test_{uuid.uuid4().hex[:12]}"
    server.create_database(name)
    try:
        yield server.url(database=name)
    finally:
        if not server.running:
            server.start()
        server.drop_database(name)
