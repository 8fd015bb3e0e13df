"""Purge sessions that expired or were revoked."""

from datetime import UTC, datetime

from sqlalchemy import Engine

from cryptomarket.core.tables import Tables
from cryptomarket.users.repository import purge_sessions_statement


def purge_sessions(engine: Engine, tables: Tables) -> int:
    with engine.begin() as connection:
        result = connection.execute(purge_sessions_statement(tables, datetime.now(UTC)))
    return int(result.rowcount)
