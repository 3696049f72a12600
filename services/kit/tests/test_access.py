"""Record-level access by owner in ResourceStore, on SQLite and PostgreSQL (as the application role, under
row-level security): members see and change only their own rows, with NOT_FOUND for anyone else's; lists
are filtered in SQL (pagination included); owners default to the creator; only admins and managers assign
records to others; trusted machinery (no principal) is not restricted."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from google.protobuf import struct_pb2
from sqlalchemy import String, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit.access import OwnerAccess, can_see, restricted, visible_to
from crm_kit.context import Principal, tenant_scope
from crm_kit.crud import ResourceStore
from crm_kit.db import Database, Resource, make_base
from crm_kit.db.engine import create_engine
from crm_kit.db.migrations import create_audit_table, create_system_tables, enable_tenant_rls, grant_app_role
from crm_kit.errors import NotFound, PermissionDenied
from crm_kit.testing.databases import DatabaseFactory

Base: Any = make_base()


class Deal(Base, Resource):
    __tablename__ = "deals"
    name: Mapped[str] = mapped_column(String(100))
    owner_id: Mapped[str] = mapped_column(String(64), default="", index=True)


def deal_message(row: Deal) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update({"id": row.id, "name": row.name, "owner_id": row.owner_id, "version": row.version})
    return message


STORE = ResourceStore(Deal, context="test", entity="deal", to_message=deal_message, owner_field="owner_id")


def _schema(connection: Connection, app_role: str) -> None:
    Base.metadata.create_all(connection)
    ops = Operations(MigrationContext.configure(connection))
    create_system_tables(ops)
    create_audit_table(ops)
    enable_tenant_rls(ops, "deals")
    if connection.dialect.name == "postgresql" and app_role:
        grant_app_role(connection, app_role)


@pytest.fixture(scope="module")
async def db(database_factory: DatabaseFactory) -> AsyncIterator[Database]:
    urls = database_factory.create("access")
    owner = create_engine(urls.owner)
    async with owner.begin() as conn:
        await conn.run_sync(_schema, urls.app_role)
    await owner.dispose()
    database = Database(urls.app)
    yield database
    await database.dispose()


class Tenant:
    def __init__(self) -> None:
        self.id = f"t{uuid.uuid4().hex[:12]}"
        self.alice = Principal("u-alice", self.id, roles=("member",))
        self.bob = Principal("u-bob", self.id, roles=("member",))
        self.manager = Principal("u-mia", self.id, roles=("manager",))
        self.admin = Principal("u-root", self.id, roles=("admin",))


async def create(db: Database, who: Principal, name: str, **values: Any) -> Deal:
    with tenant_scope(who.tenant_id, who):
        async with db.transaction() as s:
            return await STORE.create(s, {"name": name, **values})


async def get(db: Database, who: Principal, id_: str) -> Deal:
    with tenant_scope(who.tenant_id, who):
        async with db.transaction() as s:
            return await STORE.get(s, id_)


async def update(db: Database, who: Principal, id_: str, **values: Any) -> Deal:
    with tenant_scope(who.tenant_id, who):
        async with db.transaction() as s:
            row, _ = await STORE.update(s, id_, values, 0)
            return row


async def delete(db: Database, who: Principal, id_: str) -> None:
    with tenant_scope(who.tenant_id, who):
        async with db.transaction() as s:
            await STORE.delete(s, id_, 0)


async def names(db: Database, who: Principal | None, tenant_id: str, page_size: int = 500) -> list[str]:
    """Every page of the list, as `who` sees it."""
    out: list[str] = []
    token = ""
    with tenant_scope(tenant_id, who):
        while True:
            async with db.transaction() as s:
                rows, token = await STORE.list(s, where=[], filters={}, page_size=page_size, page_token=token)
            out += [r.name for r in rows]
            if not token:
                return sorted(out)


async def test_owner_defaults_to_the_creator(db: Database) -> None:
    t = Tenant()
    assert (await create(db, t.alice, "a")).owner_id == "u-alice"
    assert (await create(db, t.manager, "m")).owner_id == "u-mia"
    assert (await create(db, t.alice, "a2", owner_id="u-alice")).owner_id == "u-alice"
    assert (await create(db, t.manager, "for bob", owner_id="u-bob")).owner_id == "u-bob"


async def test_members_see_only_their_own_rows_managers_and_admins_see_all(db: Database) -> None:
    t = Tenant()
    a1 = await create(db, t.alice, "a1")
    await create(db, t.alice, "a2")
    await create(db, t.alice, "a3")
    b1 = await create(db, t.bob, "b1")
    await create(db, t.manager, "m1")

    assert await names(db, t.alice, t.id) == ["a1", "a2", "a3"]
    assert await names(db, t.alice, t.id, page_size=1) == ["a1", "a2", "a3"]  # pages filtered in SQL
    assert await names(db, t.bob, t.id) == ["b1"]
    everything = ["a1", "a2", "a3", "b1", "m1"]
    assert await names(db, t.manager, t.id) == everything
    assert await names(db, t.admin, t.id, page_size=2) == everything
    assert await names(db, None, t.id) == everything  # consumers, jobs: trusted machinery

    assert (await get(db, t.alice, a1.id)).name == "a1"
    assert (await get(db, t.manager, b1.id)).name == "b1"
    assert (await get(db, t.admin, a1.id)).name == "a1"


async def test_someone_elses_row_is_not_found_for_every_operation(db: Database) -> None:
    t = Tenant()
    b1 = await create(db, t.bob, "b1")
    for attempt in (
        get(db, t.alice, b1.id),
        update(db, t.alice, b1.id, name="hijacked"),
        update(db, t.alice, b1.id, owner_id="u-alice"),
        delete(db, t.alice, b1.id),
    ):
        with pytest.raises(NotFound) as err:
            await attempt
        # The same answer as for an id that does not exist: nothing leaks.
        assert err.value.message == f"deal {b1.id!r} not found"
    assert (await get(db, t.bob, b1.id)).name == "b1"
    assert (await get(db, t.bob, b1.id)).version == 1


async def test_members_change_their_own_rows(db: Database) -> None:
    t = Tenant()
    a1 = await create(db, t.alice, "a1")
    assert (await update(db, t.alice, a1.id, name="renamed", owner_id="u-alice")).name == "renamed"
    await delete(db, t.alice, a1.id)
    with pytest.raises(NotFound):
        await get(db, t.manager, a1.id)


async def test_only_managers_and_admins_assign_records_to_others(db: Database) -> None:
    t = Tenant()
    with pytest.raises(PermissionDenied) as err:
        await create(db, t.alice, "for bob", owner_id="u-bob")
    assert [v.field for v in err.value.violations] == ["owner_id"]
    a1 = await create(db, t.alice, "a1")
    for new_owner in ("u-bob", ""):
        with pytest.raises(PermissionDenied) as err:
            await update(db, t.alice, a1.id, owner_id=new_owner)
        assert [v.field for v in err.value.violations] == ["owner_id"]
    assert await names(db, t.alice, t.id) == ["a1"]

    moved = await update(db, t.manager, a1.id, owner_id="u-bob")
    assert moved.owner_id == "u-bob"
    assert await names(db, t.alice, t.id) == []
    assert await names(db, t.bob, t.id) == ["a1"]
    back = await update(db, t.admin, a1.id, owner_id="u-alice")
    assert back.owner_id == "u-alice" and await names(db, t.alice, t.id) == ["a1"]


async def test_owner_rule_stays_inside_the_tenant(db: Database) -> None:
    """The same subject in another tenant sees nothing of this one, even as an admin."""
    t, other = Tenant(), Tenant()
    a1 = await create(db, t.alice, "a1")
    intruder = Principal("u-alice", other.id, roles=("admin",))
    assert await names(db, intruder, other.id) == []
    with pytest.raises(NotFound):
        await get(db, intruder, a1.id)


async def test_visible_to_is_a_where_clause_for_custom_queries(db: Database) -> None:
    t = Tenant()
    await create(db, t.alice, "a1")
    await create(db, t.bob, "b1")
    nobody = Principal("", t.id, roles=("member",))
    for who, expected in ((t.alice, ["a1"]), (t.bob, ["b1"]), (t.manager, ["a1", "b1"]), (nobody, [])):
        with tenant_scope(t.id, who):
            async with db.transaction() as s:
                stmt = select(Deal.name).where(visible_to(who, Deal)).order_by(Deal.name)
                assert list((await s.scalars(stmt)).all()) == expected


def test_rules_without_a_database() -> None:
    t = Tenant()
    assert restricted(t.alice) and not restricted(t.manager) and not restricted(t.admin) and not restricted(None)
    row = Deal(name="x", owner_id="u-alice")
    assert can_see(t.alice, row) and not can_see(t.bob, row) and can_see(t.manager, row) and can_see(None, row)
    values: dict[str, Any] = {"name": "x"}
    OwnerAccess().on_create(values, t.bob)
    assert values["owner_id"] == "u-bob"
    untouched: dict[str, Any] = {"name": "y"}
    with tenant_scope(t.id):  # no principal: machinery keeps what it was given
        OwnerAccess().on_create(untouched)
    assert "owner_id" not in untouched
