"""The fold on its own, against the migrated database: what is applied, ignored, stale or malformed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import inspect, select

from crm.sales.v1 import sales_pb2 as spb
from crm_analytics.app import SPEC
from crm_analytics.fold import MalformedPayload, Outcome, decimal_text, fold
from crm_analytics.models import READ_MODEL_TABLES, Base, ContactView, OpportunityView, TenantStats
from crm_analytics.servicer import build_summary
from crm_kit.context import NoTenantError, tenant_scope
from crm_kit.db import Database
from crm_kit.db.base import utcnow
from crm_kit.db.ids import uuid7
from crm_kit.db.migrations import upgrade
from crm_kit.events.envelope import Event
from crm_kit.protos import to_dict
from crm_kit.testing.databases import DatabaseFactory


@pytest.fixture(scope="module")
async def db(database_factory: DatabaseFactory) -> AsyncIterator[Database]:
    urls = database_factory.create("analytics_fold")
    await asyncio.to_thread(upgrade, SPEC.migrations, urls.owner, urls.app_role)
    db = Database(urls.app)
    yield db
    await db.dispose()


def event(tenant: str, event_type: str, data: dict[str, Any], subject: str = "") -> Event:
    return Event(
        id=uuid7(), source="test", type=event_type, subject=subject, time=utcnow(), tenant_id=tenant, data=data
    )


def opportunity(id_: str, version: Any = 1, **fields: Any) -> dict[str, Any]:
    body = to_dict(spb.Opportunity(id=id_, stage="qualify", amount="1.00", currency="USD", status="open"))
    return {**body, "version": version, **fields}


async def apply(db: Database, e: Event) -> Outcome:
    with tenant_scope(e.tenant_id):
        async with db.transaction() as session:
            return await fold(session, e)


def tenant() -> str:
    return f"f{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize(
    ("raw", "stored"),
    [("1500.00", "1500.00"), ("", "0"), (None, "0"), (" 7 ", "7"), ("1E+3", "1000"), ("0.10", "0.10")],
)
def test_amounts_are_kept_as_exact_decimal_strings(raw: Any, stored: str) -> None:
    assert decimal_text(raw) == stored


@pytest.mark.parametrize("raw", ["abc", "NaN", "Infinity", 1.5, 10, "1" * 70])
def test_bad_amounts_are_malformed(raw: Any) -> None:
    with pytest.raises(MalformedPayload):
        decimal_text(raw)


@pytest.mark.parametrize(
    "data",
    [
        {},  # a documented action needs its resource
        {"opportunity": "not an object"},
        {"opportunity": opportunity("o1", version=0)},
        {"opportunity": opportunity("o1", version="two")},
        {"opportunity": opportunity("o1", version=True)},
        {"opportunity": opportunity("o1", amount="lots")},
        {"opportunity": opportunity("o1", stage=7)},
        {"opportunity": opportunity("other-id")},  # not the event's subject
    ],
)
async def test_malformed_payloads_raise_and_change_nothing(db: Database, data: dict[str, Any]) -> None:
    t = tenant()
    with pytest.raises(MalformedPayload):
        await apply(db, event(t, "crm.sales.opportunity.updated", data, subject="o1"))
    with tenant_scope(t):
        async with db.transaction() as session:
            assert (await session.execute(select(TenantStats))).first() is None
            assert (await session.execute(select(OpportunityView))).first() is None


async def test_what_is_applied_ignored_or_stale(db: Database) -> None:
    t = tenant()
    id_ = uuid7()
    assert await apply(db, event(t, "crm.gateway.user.created", {"user": {"id": "u", "version": 1}})) is Outcome.IGNORED
    # An undocumented action of a tracked entity: applied if it carries the resource, ignored if not.
    assert await apply(db, event(t, "crm.sales.opportunity.noted", {"note": "hi"}, id_)) is Outcome.IGNORED
    assert await apply(db, event(t, "crm.sales.opportunity.archived", {"opportunity": opportunity(id_, 2)}, id_)) is (
        Outcome.APPLIED
    )
    assert await apply(db, event(t, "crm.sales.opportunity.created", {"opportunity": opportunity(id_, 1)}, id_)) is (
        Outcome.STALE
    )
    # The subject may be missing; the resource names its id. A 64-bit style version string is accepted.
    assert await apply(db, event(t, "crm.sales.opportunity.updated", {"opportunity": opportunity(id_, "3")})) is (
        Outcome.APPLIED
    )
    assert await apply(db, event(t, "crm.sales.opportunity.deleted", {"opportunity": opportunity(id_, 3)}, id_)) is (
        Outcome.APPLIED
    )
    assert await apply(db, event(t, "crm.sales.opportunity.deleted", {"opportunity": opportunity(id_, 3)}, id_)) is (
        Outcome.STALE
    )
    with tenant_scope(t):
        async with db.transaction() as session:
            stats = (await session.execute(select(TenantStats))).scalar_one()
            assert (stats.events_processed, stats.events_ignored) == (7, 2)
            row = (await session.execute(select(OpportunityView))).scalar_one()
            assert (row.version, row.deleted) == (3, True)


async def test_the_same_resource_id_in_two_tenants_is_two_rows(db: Database) -> None:
    a, b, id_ = tenant(), tenant(), uuid7()
    contact = {"contact": {"id": id_, "version": 1}}
    assert await apply(db, event(a, "crm.customer.contact.created", contact, id_)) is Outcome.APPLIED
    assert await apply(db, event(b, "crm.customer.contact.created", contact, id_)) is Outcome.APPLIED
    assert await apply(db, event(b, "crm.customer.contact.deleted", contact, id_)) is Outcome.APPLIED
    for t, expected in ((a, 1), (b, 0)):
        with tenant_scope(t):
            async with db.transaction() as session:
                assert (await build_summary(session)).contact_count == expected
                assert len((await session.execute(select(ContactView))).all()) == 1


async def test_the_read_model_needs_a_tenant(db: Database) -> None:
    with pytest.raises(NoTenantError):
        async with db.transaction() as session:
            await build_summary(session)


async def test_large_sums_stay_exact(db: Database) -> None:
    t = tenant()
    big = "99999999999999999999999999999.99"  # 31 digits, beyond the default decimal context's 28
    for _ in range(2):
        id_ = uuid7()
        await apply(db, event(t, "crm.sales.opportunity.created", {"opportunity": opportunity(id_, amount=big)}, id_))
    with tenant_scope(t):
        async with db.transaction() as session:
            summary = await build_summary(session)
    assert [b.amount for b in summary.pipeline_by_stage] == ["199999999999999999999999999999.98"]


async def test_the_migration_creates_what_the_models_declare(db: Database) -> None:
    def columns(conn: Any) -> dict[str, set[str]]:
        inspector = inspect(conn)
        return {t: {c["name"] for c in inspector.get_columns(t)} for t in READ_MODEL_TABLES}

    async with db.engine.connect() as conn:
        created = await conn.run_sync(columns)
    assert set(READ_MODEL_TABLES) == {
        "contact_views",
        "account_views",
        "opportunity_views",
        "ticket_views",
        "campaign_views",
        "tenant_stats",
    }
    assert created == {t: {c.name for c in Base.metadata.tables[t].columns} for t in READ_MODEL_TABLES}
