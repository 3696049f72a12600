"""Migrations: idempotent, and the models never drift from them."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from crm_gateway import migrations
from crm_gateway.db import Database
from crm_gateway.models import Base


def test_upgrade_is_idempotent_and_creates_parent_dirs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/deep/er/gateway.db"
    migrations.upgrade(url)
    migrations.upgrade(url)
    db = Database(url)
    try:
        assert migrations.is_up_to_date(db.engine)
        assert migrations.current_revision(db.engine) == migrations.head_revision()
    finally:
        db.dispose()


def test_models_match_migrations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/gateway.db"
    migrations.upgrade(url)
    db = Database(url)
    try:
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": migrations.VERSION_TABLE})
            diff = compare_metadata(context, Base.metadata)
    finally:
        db.dispose()
    assert diff == []
