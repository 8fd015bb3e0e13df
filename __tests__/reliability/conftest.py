"""Databases for the fault suite: SQLite by default; a test parametrized with `database_kind`
runs on PostgreSQL too (a fresh database of the session's server)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from __tests__.databases import fresh_database_url


@pytest.fixture
def database_kind() -> str:
    return "sqlite"


@pytest.fixture
def database_url(
    request: pytest.FixtureRequest, database_kind: str, tmp_path: Path
) -> Iterator[str]:
    with fresh_database_url(request, database_kind, tmp_path) as url:
        yield url
