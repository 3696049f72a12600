"""Alembic migrations of the gateway database, driven programmatically (no alembic.ini)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from crm_gateway.config import normalize_database_url

MIGRATIONS_DIR = Path(__file__).resolve().parent
# Its own version table, so the gateway never collides with a service sharing a PostgreSQL database.
VERSION_TABLE = "gateway_alembic_version"


def alembic_config(url: str, app_role: str = "") -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    # Passed as attributes, not main options: ConfigParser would choke on '%' in passwords.
    cfg.attributes["url"] = normalize_database_url(url)
    cfg.attributes["app_role"] = app_role
    return cfg


def upgrade(url: str, app_role: str = "", revision: str = "head") -> None:
    """Apply migrations up to `revision`; on PostgreSQL grant the application role access."""
    command.upgrade(alembic_config(url, app_role), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        ctx = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def is_up_to_date(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()
