"""SQLite specifics of `crm_kit.db.Database`: write transactions that lock before their first read, and
planner statistics that reach every pooled connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from crm_kit.db import Database


async def test_a_write_transaction_sees_what_a_concurrent_one_committed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    first, second = Database(url), Database(url)  # two processes, as two engines
    async with first.transaction() as session:
        await session.execute(text("CREATE TABLE seen (n INTEGER)"))

    async def count_then_insert(db: Database, delay: float, pause: float) -> None:
        await asyncio.sleep(delay)
        async with db.transaction(write=True) as session:
            n = (await session.execute(text("SELECT count(*) FROM seen"))).scalar_one()
            await asyncio.sleep(pause)  # the other one starts meanwhile
            await session.execute(text("INSERT INTO seen VALUES (:n)"), {"n": n})

    try:
        await asyncio.gather(count_then_insert(first, 0, 0.3), count_then_insert(second, 0.1, 0))
        async with first.transaction() as session:
            counted = (await session.execute(text("SELECT n FROM seen ORDER BY n"))).scalars().all()
        # Without the lock before the read both would have counted 0 and planned on a stale read.
        assert counted == [0, 1]
    finally:
        await first.dispose()
        await second.dispose()


async def test_analyze_makes_pooled_connections_use_the_primary_key(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    lookup = "SELECT id FROM items WHERE tenant_id = 't' AND id IN ('a1', 'a2')"
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE items (id TEXT PRIMARY KEY, tenant_id TEXT, a TEXT)"))
            await session.execute(text("CREATE INDEX ix_items_tenant_a ON items (tenant_id, a, id)"))
            await session.execute(
                text("INSERT INTO items VALUES (:id, 't', :a)"), [{"id": f"a{i}", "a": str(i)} for i in range(2000)]
            )

        async def plan() -> str:
            async with db.transaction() as session:
                rows = (await session.execute(text(f"EXPLAIN QUERY PLAN {lookup}"))).all()
            return " ".join(str(r[-1]) for r in rows)

        # Without statistics SQLite takes `tenant_id = ?` for a few rows and scans the tenant's index.
        assert "ix_items_tenant_a" in await plan()
        await db.analyze("items")
        assert "sqlite_autoindex_items_1" in await plan()
    finally:
        await db.dispose()
