"""Database URLs and engines: one async engine per process for the API and ingest, sync for jobs.

Any SQLAlchemy URL form is accepted (`sqlite:///f`, `postgresql+psycopg://...`); the async and
sync URLs are derived from it with the drivers this project ships (aiosqlite / asyncpg for async,
sqlite3 / psycopg for sync).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cryptomarket.core.config import Settings
from cryptomarket.core.tables import Tables, build_tables

DEFAULT_SQLITE_FILE = "cryptomarket.sqlite3"
ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}


@dataclass(frozen=True)
class DatabaseUrls:
    async_url: URL
    sync_url: URL

    @property
    def dialect(self) -> str:
        return self.async_url.get_backend_name()


def database_urls(settings: Settings) -> DatabaseUrls:
    """DATABASE_URL when set; otherwise SQLite with DEBUG, PostgreSQL from POSTGRES_* without."""
    if settings.DATABASE_URL:
        base = make_url(settings.DATABASE_URL)
    elif settings.DEBUG:
        base = make_url(f"sqlite:///{DEFAULT_SQLITE_FILE}")
    else:
        base = URL.create(
            "postgresql",
            username=settings.POSTGRES_USER,
            password=settings.POSTGRES_PASSWORD.get_secret_value() or None,
            host=settings.POSTGRES_HOST,
            port=settings.POSTGRES_PORT,
            database=settings.POSTGRES_DB,
        )
    return urls_for(base)


def urls_for(url: URL | str) -> DatabaseUrls:
    base = make_url(url)
    backend = base.get_backend_name()
    return DatabaseUrls(
        async_url=base.set(drivername=ASYNC_DRIVERS[backend]),
        sync_url=base.set(drivername=SYNC_DRIVERS[backend]),
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while ingest writes; the busy timeout rides out the writer's lock.
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "busy_timeout=5000",
        "foreign_keys=ON",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def create_sync_engine(url: URL) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Database:
    """The process's async engine and the tables of its dialect."""

    def __init__(self, url: URL | str, *, pool_size: int = 10) -> None:
        self.urls = urls_for(url)
        # A server connection may have been cut while it sat in the pool; a SQLite file's cannot
        # (and a ping there is one more hop through the connection's thread per checkout).
        options: dict[str, Any] = {}
        if self.dialect == "postgresql":
            options |= {"pool_pre_ping": True, "pool_size": pool_size, "max_overflow": pool_size}
        self.engine: AsyncEngine = create_async_engine(self.urls.async_url, **options)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.tables: Tables = build_tables(self.dialect)

    @property
    def dialect(self) -> str:
        return self.urls.dialect

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction that commits on success and rolls back on error."""
        async with self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as connection:
            yield connection

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
