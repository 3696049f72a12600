"""Lookups that must use an index on SQLite whatever the statistics say (a scan of every contact is what made
imports and CreateContact slow at 100k contacts)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.dialects import sqlite

from crm_customer.app import SPEC
from crm_customer.models import Contact, external_id_in
from crm_kit.db import Database
from crm_kit.db.migrations import upgrade


async def plan_of(db: Database, stmt: object) -> str:
    sql = str(stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))  # type: ignore[attr-defined]
    async with db.engine.connect() as connection:
        rows = (await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")).all()
    return " ".join(str(r[-1]) for r in rows)


async def test_external_id_lookups_use_the_partial_unique_index(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'customer.db'}"
    await asyncio.to_thread(upgrade, SPEC.migrations, url)  # Alembic runs its own event loop
    db = Database(url)
    try:
        for values in (("ext-1",), ("ext-1", "ext-2")):
            stmt = select(Contact.id).where(Contact.tenant_id == "t", external_id_in(*values))
            assert "USING INDEX uq_contacts_tenant_id_external_id" in await plan_of(db, stmt)
        # The plain comparison cannot use that index: SQLite does not see that it implies `<> ''`.
        plain = select(Contact.id).where(Contact.tenant_id == "t", Contact.external_id == "ext-1")
        assert "uq_contacts_tenant_id_external_id" not in await plan_of(db, plain)
    finally:
        await db.dispose()
