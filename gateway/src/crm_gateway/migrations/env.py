"""Alembic environment of the gateway database (sync engine, online mode only).

Driven programmatically by ``crm_gateway.migrations.upgrade``; there is no alembic.ini.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from crm_gateway.db import make_engine
from crm_gateway.migrations import VERSION_TABLE
from crm_gateway.models import Base
from crm_kit.db.migrations import grant_app_role


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        transaction_per_migration=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    app_role: str = context.config.attributes.get("app_role", "")
    if connection.dialect.name == "postgresql" and app_role:
        grant_app_role(connection, app_role)
    connection.commit()


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(context.config.attributes["url"])
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


run()
