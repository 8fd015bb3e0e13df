"""Upgrade a database to the newest schema. Only ever upgrades: start-up never downgrades."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(sync_url: URL) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = sync_url
    return config


def upgrade(sync_url: URL) -> None:
    command.upgrade(alembic_config(sync_url), "head")
