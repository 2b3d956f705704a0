"""Alembic migrations of the moodtunes database, runnable without an alembic.ini
(`python -m moodtunes.migrations upgrade`, which `moodtunes db upgrade` also calls)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from moodtunes.config import get_settings

HERE = Path(__file__).resolve().parent


def sqlalchemy_url(database_url: str) -> str:
    """psycopg 3 under SQLAlchemy; accepts plain postgresql:// URLs."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {database_url!r}")


def alembic_config(database_url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url or get_settings().database_url))
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
