"""The transactional outbox: events are rows in the caller's transaction (SQLite, no NATS needed)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from sqlalchemy import String, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit.context import NoTenantError, system_scope, tenant_scope
from crm_kit.db import Database, Resource, make_base
from crm_kit.db.engine import create_engine
from crm_kit.db.migrations import create_system_tables, enable_tenant_rls, grant_app_role
from crm_kit.db.system_tables import PENDING, OutboxMessage
from crm_kit.events import Event, InvalidSubject, record_event
from crm_kit.testing.databases import DatabaseFactory

Base = make_base()


class Gadget(Base, Resource):
    __tablename__ = "gadgets"
    name: Mapped[str] = mapped_column(String(200))


def _create_schema(connection: Connection, app_role: str) -> None:
    Base.metadata.create_all(connection)
    ops = Operations(MigrationContext.configure(connection))
    create_system_tables(ops)
    enable_tenant_rls(ops, "gadgets")
    if connection.dialect.name == "postgresql" and app_role:
        grant_app_role(connection, app_role)


@pytest.fixture
async def db(database_factory: DatabaseFactory) -> AsyncIterator[Database]:
    """SQLite, and PostgreSQL as the application role when CRM_TEST_POSTGRES_URL is set."""
    urls = database_factory.create("outbox")
    owner = create_engine(urls.owner)
    async with owner.begin() as conn:
        await conn.run_sync(_create_schema, urls.app_role)
    await owner.dispose()
    database = Database(urls.app)
    yield database
    await database.dispose()


async def outbox_rows(db: Database) -> list[OutboxMessage]:
    with system_scope():  # the outbox holds every tenant's events; only kit machinery reads it all
        async with db.transaction() as session:
            return list((await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all())


async def test_event_commits_with_the_change(db: Database) -> None:
    with tenant_scope("tenant-a"):
        async with db.transaction() as session:
            gadget = Gadget(name="李四的小工具")
            session.add(gadget)
            await session.flush()
            event = await record_event(
                session,
                source="crm/test",
                type="crm.test.gadget.created",
                subject=gadget.id,
                data={"name": gadget.name},
            )
    [row] = await outbox_rows(db)
    assert row.id == event.id
    assert row.tenant_id == "tenant-a"
    assert row.subject == "crm.events.tenant-a.test.gadget.created"
    assert row.type == "crm.test.gadget.created"
    assert row.status == PENDING and row.attempts == 0
    assert "李四的小工具" in row.payload  # stored as text, not \u escapes
    assert Event.from_json(row.payload.encode()) == event
    assert event.subject == gadget.id
    assert event.time.tzinfo is not None


async def test_rolled_back_change_leaves_no_event(db: Database) -> None:
    with tenant_scope("tenant-a"), pytest.raises(RuntimeError, match="boom"):
        async with db.transaction() as session:
            session.add(Gadget(name="never"))
            await record_event(session, source="crm/test", type="crm.test.gadget.created", subject="x", data={})
            raise RuntimeError("boom")
    assert await outbox_rows(db) == []
    with tenant_scope("tenant-a"):
        async with db.transaction() as session:
            assert (await session.scalars(select(Gadget))).all() == []


async def test_needs_a_tenant_and_a_valid_type(db: Database) -> None:
    async with db.transaction() as session:
        with pytest.raises(NoTenantError):
            await record_event(session, source="crm/test", type="crm.test.gadget.created", subject="x", data={})
    with tenant_scope("tenant-a"):
        async with db.transaction() as session:
            with pytest.raises(InvalidSubject):
                await record_event(session, source="crm/test", type="gadget.created", subject="x", data={})
    assert await outbox_rows(db) == []


async def test_traceparent_comes_from_the_current_span(db: Database) -> None:
    span_context = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(span_context)))
    try:
        with tenant_scope("tenant-a"):
            async with db.transaction() as session:
                event = await record_event(
                    session, source="crm/test", type="crm.test.gadget.updated", subject="g1", data={}
                )
    finally:
        otel_context.detach(token)
    expected = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert event.traceparent == expected
    [row] = await outbox_rows(db)
    assert row.traceparent == expected
    assert json.loads(row.payload)["traceparent"] == expected

    with tenant_scope("tenant-a"):  # outside any span: empty
        async with db.transaction() as session:
            event = await record_event(
                session, source="crm/test", type="crm.test.gadget.updated", subject="g1", data={}
            )
    assert event.traceparent == ""
