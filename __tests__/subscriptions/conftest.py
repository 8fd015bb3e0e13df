"""The service on each database kind, for the subscription tests."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from __tests__.databases import fresh_database_url
from __tests__.service import Service, running_service
from cryptomarket.deribit.simulator import Simulator


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database_url(request, request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def service_on(simulator: Simulator, any_database_url: str) -> AsyncIterator[Service]:
    """The embedded service (its own ingest) on SQLite and on PostgreSQL."""
    async with running_service(simulator, any_database_url) as running:
        yield running
