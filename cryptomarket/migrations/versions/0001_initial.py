"""The initial schema: person, person_prices, price_tickers, price_gaps.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from cryptomarket.core.tables import table_name

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name

    def create(name: str, *items: sa.schema.SchemaItem, **options: Any) -> None:
        real_name, schema = table_name(name, dialect)
        op.create_table(real_name, *items, schema=schema, **options)

    person, schema = table_name("person", dialect)
    person_ref = f"{schema}.{person}.user_id" if schema else f"{person}.user_id"
    create(
        "person",
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("client_secret_encrypted", sa.LargeBinary, nullable=False),
        sa.Column("deribit_account_id", sa.BigInteger, nullable=True),
        sa.Column("profile", sa.JSON, nullable=True),
        sa.Column("profile_fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    create(
        "person_prices",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "user_id", sa.String(64), sa.ForeignKey(person_ref, ondelete="CASCADE"), nullable=False
        ),
        sa.Column("ticker", sa.String(64), nullable=False),
        sa.Column("timer", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("user_id", "ticker", name="uq_person_prices_user_ticker"),
    )
    create(
        "price_tickers",
        sa.Column("ticker", sa.String(64), nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("price", sa.Double, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ticker", "timestamp", name="pk_price_tickers"),
        sqlite_with_rowid=False,
    )
    create(
        "price_gaps",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ticker", sa.String(64), nullable=False),
        sa.Column("from_ts", sa.BigInteger, nullable=False),
        sa.Column("to_ts", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("ticker", "from_ts", name="uq_price_gaps_ticker_from"),
    )


def downgrade() -> None:
    # History is never dropped by a migration (SPEC section 2); go forward with a new revision.
    raise NotImplementedError("CryptoMarket migrations do not downgrade")
