"""Sessions: hashed tokens with an expiry.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cryptomarket.core.tables import table_name

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    person, schema = table_name("person", dialect)
    person_ref = f"{schema}.{person}.user_id" if schema else f"{person}.user_id"
    name, schema = table_name("sessions", dialect)
    op.create_table(
        name,
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column(
            "user_id", sa.String(64), sa.ForeignKey(person_ref, ondelete="CASCADE"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        schema=schema,
    )
    op.create_index(f"ix_{name}_user_id", name, ["user_id"], schema=schema)


def downgrade() -> None:
    raise NotImplementedError("CryptoMarket migrations do not downgrade")
