"""Lookups that must use an index on SQLite whatever the statistics say (a scan of every contact is what made
imports and CreateContact slow at 100k contacts)."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.dialects import sqlite

from crm_customer.app import SPEC
from crm_customer.custom_field_search import MISSING, VALUED, run_statement
from crm_customer.custom_fields import Definition
from crm_customer.models import Contact, external_id_in
from crm_kit.access import visible_to
from crm_kit.context import Principal, tenant_scope
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


async def test_a_page_by_one_custom_field_reads_its_value_index_in_order(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'customer.db'}"
    await asyncio.to_thread(upgrade, SPEC.migrations, url)
    db = Database(url)
    try:
        with tenant_scope("t"):
            member = visible_to(Principal(subject="u-1", tenant_id="t", roles=("member",)), Contact)
            samples = (("number", "number", 1.5), ("text", "text", "x"), ("date", "date", date(2027, 1, 31)))
            for kind, index, value in (*samples, ("boolean", "bool", True)):
                definition = Definition("k", kind, False, ())
                for descending, after in ((False, None), (True, (value, "0190a5f2-0000-7000-8000-000000000001"))):
                    stmt = run_statement(VALUED, definition, [member], after, descending).limit(51)
                    plan = await plan_of(db, stmt)
                    assert f"USING INDEX ix_custom_field_values_{index}" in plan or (
                        f"USING COVERING INDEX ix_custom_field_values_{index}" in plan
                    ), plan
                    assert "TEMP B-TREE" not in plan, plan  # no sort of every match: the index gives the order
            # The records without a value: the contacts in id order, each probed by primary key.
            plan = await plan_of(db, run_statement(MISSING, Definition("k", "number", False, ()), [], None, False))
            assert "TEMP B-TREE" not in plan, plan
    finally:
        await db.dispose()
