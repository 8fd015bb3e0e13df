"""Alembic environment: runs the migrations on the sync engine of either database."""

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import URL

from cryptomarket.core.config import load_settings
from cryptomarket.core.db import create_sync_engine, database_urls
from cryptomarket.core.tables import SCHEMA, SQLITE_PREFIX, build_tables

# Two processes migrating at once (replicas starting together) take turns on this lock.
MIGRATION_LOCK = 715_220_001


def run_migrations() -> None:
    url: URL = context.config.attributes.get("url") or database_urls(load_settings()).sync_url
    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            dialect = connection.dialect.name
            postgres = dialect == "postgresql"
            if postgres:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
                connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
                connection.commit()
            context.configure(
                connection=connection,
                target_metadata=build_tables(dialect).metadata,
                version_table="alembic_version" if postgres else f"{SQLITE_PREFIX}alembic_version",
                version_table_schema=SCHEMA if postgres else None,
                render_as_batch=not postgres,
            )
            with context.begin_transaction():
                context.run_migrations()
            if postgres:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
                connection.commit()
    finally:
        engine.dispose()


run_migrations()
