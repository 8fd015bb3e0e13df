"""Candles beside the ticks: per minute and per hour, filled from the ticks already stored.

`GET /api/v1/prices/candles` reads coarser candles from these instead of scanning the ticks
(prices/rollups.py keeps them as ticks are written).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cryptomarket.core.tables import build_tables, table_name
from cryptomarket.prices.rollups import HOUR_MS, MINUTE_MS, rebuild_candles

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    name, schema = table_name("price_candles", dialect)
    op.create_table(
        name,
        sa.Column("ticker", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("start", sa.BigInteger, nullable=False),
        sa.Column("open_ts", sa.BigInteger, nullable=False),
        sa.Column("open", sa.Double, nullable=False),
        sa.Column("high", sa.Double, nullable=False),
        sa.Column("low", sa.Double, nullable=False),
        sa.Column("close_ts", sa.BigInteger, nullable=False),
        sa.Column("close", sa.Double, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("ticker", "width", "start", name="pk_price_candles"),
        schema=schema,
        sqlite_with_rowid=False,
    )
    tables = build_tables(dialect)
    for width in (MINUTE_MS, HOUR_MS):  # hours are built from the minutes
        op.execute(rebuild_candles(tables, dialect, width))


def downgrade() -> None:
    raise NotImplementedError("CryptoMarket migrations do not downgrade")
