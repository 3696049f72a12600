"""The ORM tenant guard: every query is confined to the current tenant, inserts are stamped, and with no
tenant in context tenant-scoped queries fail closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import String, delete, func, select, update
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit.context import NoTenantError, tenant_scope
from crm_kit.db import Database, Resource, make_base

Base = make_base()


class Gadget(Base, Resource):
    __tablename__ = "gadgets"
    name: Mapped[str] = mapped_column(String(50))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'guard.db'}")
    async with database.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    with tenant_scope("a"):
        async with database.transaction() as s:
            s.add_all([Gadget(name="a1"), Gadget(name="a2")])
    with tenant_scope("b"):
        async with database.transaction() as s:
            s.add(Gadget(name="b1"))
    yield database
    await database.dispose()


async def test_selects_see_only_the_current_tenant(db: Database) -> None:
    with tenant_scope("a"):
        async with db.transaction() as s:
            names = sorted((await s.scalars(select(Gadget.name).select_from(Gadget))).all())
            # column-only selects are guarded too, as are aggregates
            assert names == ["a1", "a2"]
            assert await s.scalar(select(func.count()).select_from(Gadget)) == 2
            assert {g.tenant_id for g in (await s.scalars(select(Gadget))).all()} == {"a"}


async def test_updates_and_deletes_cannot_reach_another_tenant(db: Database) -> None:
    with tenant_scope("a"):
        async with db.transaction() as s:
            await s.execute(update(Gadget).values(name="renamed"))
            await s.execute(delete(Gadget).where(Gadget.name == "b1"))
    with tenant_scope("b"):
        async with db.transaction() as s:
            assert (await s.scalars(select(Gadget.name))).all() == ["b1"]


async def test_no_tenant_fails_closed(db: Database) -> None:
    async with db.sessions() as s:
        with pytest.raises(NoTenantError):
            await s.execute(select(Gadget))


async def test_inserting_for_another_tenant_is_refused(db: Database) -> None:
    with tenant_scope("a"), pytest.raises(NoTenantError):
        async with db.transaction() as s:
            s.add(Gadget(name="sneaky", tenant_id="b"))
    with tenant_scope("b"):
        async with db.transaction() as s:
            assert (await s.scalars(select(Gadget.name))).all() == ["b1"]
