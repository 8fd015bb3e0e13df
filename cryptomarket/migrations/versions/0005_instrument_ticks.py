"""Instrument ticks: a table beside price_tickers with the same columns and the ticker fields.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cryptomarket.core.tables import table_name

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    name, schema = table_name("instrument_ticks", op.get_bind().dialect.name)
    op.create_table(
        name,
        sa.Column("ticker", sa.String(64), nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("price", sa.Double, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fields", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("ticker", "timestamp", name="pk_instrument_ticks"),
        schema=schema,
        sqlite_with_rowid=False,
    )
    # Last-Event-ID replay walks the publish stamps, as on price_tickers (0003).
    op.create_index(f"ix_{name}_received_at", name, ["ticker", "received_at"], schema=schema)


def downgrade() -> None:
    raise NotImplementedError("CryptoMarket migrations do not downgrade")
