"""An index on the publish stamp of ticks, for Last-Event-ID replay across tickers.

A reconnecting stream resumes after the publish stamp (`received_at`) of the last tick it got, for
every ticker it follows; without this index each of those lookups would scan the ticker's history.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

from cryptomarket.core.tables import table_name

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    name, schema = table_name("price_tickers", op.get_bind().dialect.name)
    op.create_index(f"ix_{name}_received_at", name, ["ticker", "received_at"], schema=schema)


def downgrade() -> None:
    raise NotImplementedError("CryptoMarket migrations do not downgrade")
