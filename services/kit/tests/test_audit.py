"""The audit log, on SQLite and PostgreSQL (as the application role): every create, update and delete
through ResourceStore writes an entry in the same transaction, with the actor, the values before and after
and the trace; consumers act as "system:<consumer>"; entries are tenant-isolated; the log is append-only
(only erasure's redaction may blank values)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from google.protobuf import struct_pb2
from nats.js.errors import NotFoundError
from sqlalchemy import JSON, String, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit.audit import REDACTED, AuditEntry, record_audit, redact_audit
from crm_kit.context import Principal, tenant_scope
from crm_kit.crud import ResourceStore
from crm_kit.db import Database, Resource, make_base, uuid7
from crm_kit.db.engine import create_engine
from crm_kit.db.migrations import create_audit_table, create_system_tables, enable_tenant_rls, grant_app_role
from crm_kit.events import DEFAULT_STREAM, Event, EventBus, EventConsumer, ensure_stream
from crm_kit.telemetry import configure_tracing, tracer
from crm_kit.testing.databases import DatabaseFactory, DatabaseUrls
from crm_kit.testing.nats import NatsServer

Base: Any = make_base()


class Lead(Base, Resource):
    __tablename__ = "leads"
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(100), default="")
    owner_id: Mapped[str] = mapped_column(String(64), default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)


def lead_message(row: Lead) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(
        {
            "id": row.id,
            "name": row.name,
            "email": row.email,
            "owner_id": row.owner_id,
            "tags": list(row.tags),
            "version": row.version,
            "create_time": row.create_time.isoformat().replace("+00:00", "Z"),
        }
    )
    return message


STORE = ResourceStore(Lead, context="test", entity="lead", to_message=lead_message, owner_field="owner_id")


def _schema(connection: Connection, app_role: str) -> None:
    Base.metadata.create_all(connection)
    ops = Operations(MigrationContext.configure(connection))
    create_system_tables(ops)
    create_audit_table(ops)
    enable_tenant_rls(ops, "leads")
    if connection.dialect.name == "postgresql" and app_role:
        grant_app_role(connection, app_role)  # its blanket grant must not reopen UPDATE/DELETE on audit_log


@pytest.fixture(scope="module")
def urls(database_factory: DatabaseFactory) -> DatabaseUrls:
    return database_factory.create("audit")


@pytest.fixture(scope="module")
async def db(urls: DatabaseUrls) -> AsyncIterator[Database]:
    owner = create_engine(urls.owner)
    async with owner.begin() as conn:
        await conn.run_sync(_schema, urls.app_role)
    await owner.dispose()
    database = Database(urls.app)
    yield database
    await database.dispose()


def tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def member(tenant_id: str, subject: str = "u-alice") -> Principal:
    return Principal(subject, tenant_id, roles=("member",))


async def entries(db: Database, tenant_id: str, entity_id: str | None = None) -> list[AuditEntry]:
    """Oldest first."""
    with tenant_scope(tenant_id):
        async with db.transaction() as s:
            stmt = select(AuditEntry).order_by(AuditEntry.id)
            if entity_id is not None:
                stmt = stmt.where(AuditEntry.entity_id == entity_id)
            return list((await s.scalars(stmt)).all())


async def test_create_update_delete_are_audited_with_values_actor_and_trace(db: Database) -> None:
    t = tenant()
    alice = member(t)
    configure_tracing("kit-tests")
    with tenant_scope(t, alice), tracer("test").start_as_current_span("request") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        async with db.transaction() as s:
            lead = await STORE.create(s, {"name": "Ada", "email": "ada@example.com", "tags": ["vip"]})
        async with db.transaction() as s:
            await STORE.update(s, lead.id, {"name": "Ada L.", "email": "ada@example.com", "tags": ["vip", "b"]}, 1)
        async with db.transaction() as s:
            await STORE.update(s, lead.id, {"name": "Ada L."}, 0)  # nothing changes: nothing to audit
        async with db.transaction() as s:
            await STORE.delete(s, lead.id, 2)

    created, updated, deleted = await entries(db, t, lead.id)
    for entry in (created, updated, deleted):
        assert (entry.actor, entry.actor_roles, entry.entity, entry.entity_id, entry.tenant_id) == (
            "u-alice",
            ["member"],
            "lead",
            lead.id,
            t,
        )
        assert entry.trace_id == trace_id
        assert entry.time.tzinfo is not None
    assert created.action == "create" and created.before is None
    assert created.after is not None
    assert {k: created.after[k] for k in ("id", "name", "email", "owner_id", "tags", "version")} == {
        "id": lead.id,
        "name": "Ada",
        "email": "ada@example.com",
        "owner_id": "u-alice",
        "tags": ["vip"],
        "version": 1,
    }
    assert "tenant_id" not in created.after
    assert created.after["create_time"].endswith("Z")
    # Only what changed, old and new.
    assert updated.action == "update"
    assert updated.before == {"name": "Ada", "tags": ["vip"]}
    assert updated.after == {"name": "Ada L.", "tags": ["vip", "b"]}
    assert deleted.action == "delete" and deleted.after is None
    assert deleted.before is not None
    assert (deleted.before["name"], deleted.before["version"]) == ("Ada L.", 2)


async def test_no_entry_without_the_change_and_no_change_without_its_entry(db: Database) -> None:
    t = tenant()
    with tenant_scope(t, member(t)), contextlib.suppress(RuntimeError):
        async with db.transaction() as s:
            await STORE.create(s, {"name": "Rolled back"})
            raise RuntimeError("the request failed after the write")
    assert await entries(db, t) == []

    with tenant_scope(t, member(t)):
        async with db.transaction() as s:
            taken = await record_audit(s, action="note", entity="lead", entity_id="x")
        with pytest.raises(DBAPIError):  # the entry cannot be written: the change is not made either
            async with db.transaction() as s:
                await STORE.create(s, {"name": "Unaudited"})
                s.add(AuditEntry(id=taken.id, actor="x", action="x", entity="x", entity_id="x"))
        async with db.transaction() as s:
            assert (await s.scalars(select(Lead))).all() == []
    assert [e.action for e in await entries(db, t)] == ["note"]


async def test_custom_actions_and_values_are_recorded_as_json(db: Database) -> None:
    t = tenant()
    when = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
    with tenant_scope(t, Principal("u-mia", t, roles=("manager", "member"))):
        async with db.transaction() as s:
            await record_audit(
                s,
                action="merge",
                entity="lead",
                entity_id="L1",
                before={"amount": Decimal("12.50"), "seen": when, "ids": ("a", "b")},
                after={"merged_into": "L2"},
            )
    (entry,) = await entries(db, t)
    assert (entry.action, entry.actor, entry.actor_roles) == ("merge", "u-mia", ["manager", "member"])
    assert entry.before == {"amount": "12.50", "seen": "2025-03-01T08:30:00Z", "ids": ["a", "b"]}
    assert entry.after == {"merged_into": "L2"}
    assert entry.trace_id == ""  # no span: no trace


async def test_entries_are_tenant_isolated(db: Database) -> None:
    a, b = tenant(), tenant()
    with tenant_scope(a, member(a)):
        async with db.transaction() as s:
            lead = await STORE.create(s, {"name": "Only in A"})
    assert len(await entries(db, a, lead.id)) == 1
    assert await entries(db, b) == []
    with tenant_scope(b, member(b)):
        async with db.transaction() as s:
            assert await redact_audit(s, entity="lead", entity_id=lead.id) == 0
    (entry,) = await entries(db, a, lead.id)
    assert entry.after is not None and entry.after["name"] == "Only in A"


@pytest.mark.usefixtures("db")
async def test_row_level_security_confines_raw_sql_on_postgres(db: Database, db_backend: str) -> None:
    if db_backend != "postgres":
        pytest.skip("row-level security is PostgreSQL's")
    a, b = tenant(), tenant()
    with tenant_scope(a, member(a)):
        async with db.transaction() as s:
            await STORE.create(s, {"name": "A"})
    with tenant_scope(b):
        async with db.transaction() as s:  # raw SQL escapes the ORM guard, not RLS
            assert await s.scalar(text("SELECT count(*) FROM audit_log WHERE tenant_id = :a"), {"a": a}) == 0
        with pytest.raises(DBAPIError):
            async with db.transaction() as s:
                await s.execute(
                    text(
                        "INSERT INTO audit_log (id, tenant_id, time, actor, actor_roles, action, entity, entity_id,"
                        " trace_id) VALUES (:id, :t, now(), 'forger', '[]', 'create', 'lead', 'x', '')"
                    ),
                    {"id": uuid7(), "t": a},
                )


async def test_the_log_is_append_only(db: Database, urls: DatabaseUrls, db_backend: str) -> None:
    t = tenant()
    with tenant_scope(t, member(t)):
        async with db.transaction() as s:
            lead = await STORE.create(s, {"name": "Ada"})
    attempts = [
        "UPDATE audit_log SET actor = 'someone-else'",
        "UPDATE audit_log SET action = 'nothing'",
        "DELETE FROM audit_log",
    ]
    if db_backend == "postgres":
        attempts += [
            "UPDATE audit_log SET after = NULL",  # on PostgreSQL no column may be updated directly
            "TRUNCATE audit_log",
        ]
    for sql in attempts:
        with tenant_scope(t), pytest.raises(DBAPIError) as err:
            async with db.transaction() as s:
                await s.execute(text(sql))
        message = str(err.value).lower()
        assert ("permission denied" in message) if db_backend == "postgres" else ("append-only" in message), sql
    (entry,) = await entries(db, t, lead.id)
    assert (entry.actor, entry.action) == ("u-alice", "create")
    if db_backend == "postgres":  # the app role really is the connected role, not an owner
        with tenant_scope(t):
            async with db.transaction() as s:
                assert await s.scalar(text("SELECT current_user")) == urls.app_role


async def test_redaction_blanks_values_and_keeps_who_when_and_what(db: Database) -> None:
    t = tenant()
    with tenant_scope(t, member(t)):
        async with db.transaction() as s:
            lead = await STORE.create(s, {"name": "Ada", "email": "ada@example.com"})
        async with db.transaction() as s:
            await STORE.update(s, lead.id, {"name": "Ada L."}, 0)
        async with db.transaction() as s:
            other = await STORE.create(s, {"name": "Bob"})
        async with db.transaction() as s:
            assert await redact_audit(s, entity="lead", entity_id=lead.id, fields=["email"]) == 2
    created, updated = await entries(db, t, lead.id)
    assert created.after is not None
    assert (created.after["email"], created.after["name"]) == (REDACTED, "Ada")
    assert (updated.before, updated.after) == ({"name": "Ada"}, {"name": "Ada L."})

    with tenant_scope(t):  # e.g. in the erasure consumer
        async with db.transaction() as s:
            assert await redact_audit(s, entity="lead", entity_id=lead.id) == 2
    created, updated = await entries(db, t, lead.id)
    assert created.after is not None
    assert set(created.after.values()) == {REDACTED} and "email" in created.after
    assert (updated.before, updated.after) == ({"name": REDACTED}, {"name": REDACTED})
    assert (created.actor, created.action, updated.action) == ("u-alice", "create", "update")
    (untouched,) = await entries(db, t, other.id)
    assert untouched.after is not None and untouched.after["name"] == "Bob"


# -- consumers ----------------------------------------------------------------------------------------


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[EventBus]:
    if not nats_server.running:
        nats_server.start()
    event_bus = await EventBus.connect([nats_server.url], name="audit-tests", timeout=10)
    await ensure_stream(event_bus, DEFAULT_STREAM, update_existing=False)
    yield event_bus
    await event_bus.close()


async def test_changes_made_by_a_consumer_are_audited_as_the_consumer(db: Database, bus: EventBus) -> None:
    t = tenant()
    name = f"audit-test-{uuid.uuid4().hex[:8]}"

    async def handler(session: AsyncSession, event: Event) -> None:
        await STORE.create(session, {"name": event.data["name"], "owner_id": "u-alice"})

    consumer = EventConsumer(db, bus, name=name, subjects=[f"crm.events.{t}.test.>"], handler=handler)
    event = Event(
        id=uuid7(),
        source="crm.test",
        type="crm.test.signup.created",
        subject="s1",
        time=datetime.now(UTC),
        tenant_id=t,
        data={"name": "From an event"},
    )
    await bus.js.publish(event.nats_subject, event.to_json(), headers={"Nats-Msg-Id": event.id})
    try:
        assert await consumer.process_available(timeout=5) == 1
    finally:
        await consumer.close()
        with contextlib.suppress(NotFoundError):
            await bus.js.delete_consumer(DEFAULT_STREAM, name)
    (entry,) = await entries(db, t)
    assert (entry.actor, entry.actor_roles, entry.action) == (f"system:{name}", [], "create")
    assert entry.after is not None and entry.after["owner_id"] == "u-alice"  # machinery is not restricted
