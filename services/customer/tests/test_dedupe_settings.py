"""The tenant's duplicate threshold and merge retention (CustomerSettings) and the purge of expired merges'
snapshots, over a real gRPC channel on SQLite and PostgreSQL. On PostgreSQL the service and the purge run
as the application role, under row-level security, as in production; one test also migrates with an owner
that is no superuser (bound by FORCE ROW LEVEL SECURITY, as a production owner is)."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import make_url

from crm.common.v1 import personal_data_pb2, personal_data_pb2_grpc
from crm.customer.v1 import customer_pb2 as cpb
from crm.customer.v1 import customer_pb2_grpc, dedupe_pb2_grpc
from crm.customer.v1 import dedupe_pb2 as pb
from crm_customer import merge
from crm_customer.app import SPEC, purge_merges
from crm_customer.merge import ContactMerge
from crm_kit.context import tenant_scope
from crm_kit.db import utcnow
from crm_kit.runtime import ServiceRuntime
from crm_kit.settings import KitSettings, ServiceSettings
from crm_kit.testing.databases import APP_ROLE, DatabaseFactory, DatabaseUrls, postgres_url
from crm_kit.testing.grpc import violations
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer

Metadata = tuple[tuple[str, str], ...]
# The service under test runs no chores, so that nothing purges behind a test's back; the chore itself is
# tested with a runtime of its own (test_the_service_purges_by_itself).
QUIET = replace(SPEC, chores=())


@pytest.fixture(scope="module")
def urls(database_factory: DatabaseFactory) -> DatabaseUrls:
    return database_factory.create("dedupe-settings")


@pytest.fixture(scope="module")
async def customer(urls: DatabaseUrls, nats_url: str, token_issuer: TokenIssuer) -> AsyncIterator[ServiceRuntime]:
    rt = await start_service(QUIET, urls, nats_url=nats_url, verifier=token_issuer.verifier())
    yield rt
    await rt.stop()


class Calls:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.contacts = customer_pb2_grpc.CustomerServiceStub(channel)
        self.dedupe = dedupe_pb2_grpc.DedupeServiceStub(channel)
        self.export = personal_data_pb2_grpc.PersonalDataServiceStub(channel)

    async def settings(self, md: Metadata, **changes: Any) -> cpb.CustomerSettings:
        return await self.contacts.UpdateCustomerSettings(cpb.UpdateCustomerSettingsRequest(**changes), metadata=md)

    async def create(self, md: Metadata, **fields: Any) -> cpb.Contact:
        return await self.contacts.CreateContact(cpb.CreateContactRequest(contact=cpb.Contact(**fields)), metadata=md)

    async def merged(self, md: Metadata, name: str) -> pb.ContactMerge:
        """Two contacts of one person, merged."""
        email = f"{uuid.uuid4().hex[:8]}@merge.example"
        a = await self.create(md, first_name=name, last_name="Merge", email=email, job_title="Survivor")
        b = await self.create(md, first_name=name, last_name="Merge", email=email, department="Duplicate Dept")
        return await self.dedupe.MergeContacts(
            pb.MergeContactsRequest(id=a.id, duplicate_id=b.id, field_choices={"department": "duplicate"}),
            metadata=md,
        )


@pytest.fixture(scope="module")
async def calls(customer: ServiceRuntime) -> AsyncIterator[Calls]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{customer.port}") as channel:
        yield Calls(channel)


def tenant() -> str:
    return f"t-ds-{uuid.uuid4().hex[:10]}"


async def expire(rt: ServiceRuntime, tenant_id: str, merge_id: str) -> None:
    with tenant_scope(tenant_id):
        async with rt.db.transaction() as session:
            await session.execute(
                update(ContactMerge)
                .where(ContactMerge.id == merge_id)
                .values(expire_time=utcnow() - timedelta(seconds=1))
            )


async def stored(rt: ServiceRuntime, tenant_id: str, merge_id: str) -> ContactMerge:
    with tenant_scope(tenant_id):
        async with rt.db.transaction() as session:
            row = await session.get(ContactMerge, merge_id)
            assert row is not None
            return row


# --- the settings -------------------------------------------------------------------------------------


async def test_settings_round_trip_and_validation(calls: Calls, token_issuer: TokenIssuer) -> None:
    md, other = token_issuer.metadata(tenant()), token_issuer.metadata(tenant())
    got = await calls.contacts.GetCustomerSettings(cpb.GetCustomerSettingsRequest(), metadata=md)
    assert (got.duplicate_threshold, got.merge_retention_days, got.version) == (70, 30, 0)
    s = await calls.settings(md, duplicate_threshold=80)
    assert (s.duplicate_threshold, s.merge_retention_days, s.version) == (80, 30, 1)
    s = await calls.settings(md, merge_retention_days=7, version=1)
    assert (s.duplicate_threshold, s.merge_retention_days, s.version) == (80, 7, 2)
    s = await calls.settings(md, title_case_names=True)  # other settings keep them
    assert (s.duplicate_threshold, s.merge_retention_days, s.version) == (80, 7, 3)
    got = await calls.contacts.GetCustomerSettings(cpb.GetCustomerSettingsRequest(), metadata=md)
    assert (got.duplicate_threshold, got.merge_retention_days, got.version) == (80, 7, 3)
    assert (await calls.settings(md, duplicate_threshold=80)).version == 3  # no change, no new version
    for changes, fields in (
        ({"duplicate_threshold": 101}, {"duplicate_threshold"}),
        ({"duplicate_threshold": -5}, {"duplicate_threshold"}),
        ({"merge_retention_days": -1}, {"merge_retention_days"}),
        ({"merge_retention_days": 3651}, {"merge_retention_days"}),
        ({"duplicate_threshold": 200, "merge_retention_days": -1}, {"duplicate_threshold", "merge_retention_days"}),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await calls.settings(md, **changes)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(violations(err.value)) == fields
    assert "between 1 and 100" in violations(err.value)["duplicate_threshold"]
    assert "between 1 and 3650" in violations(err.value)["merge_retention_days"]
    got = await calls.contacts.GetCustomerSettings(cpb.GetCustomerSettingsRequest(), metadata=md)
    assert (got.duplicate_threshold, got.merge_retention_days, got.version) == (80, 7, 3)  # nothing changed
    edges = await calls.settings(md, duplicate_threshold=1, merge_retention_days=3650)
    assert (edges.duplicate_threshold, edges.merge_retention_days) == (1, 3650)
    # Admins only; another tenant keeps the defaults.
    member = token_issuer.metadata(tenant(), roles=("manager",))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.settings(member, duplicate_threshold=50)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    untouched = await calls.contacts.GetCustomerSettings(cpb.GetCustomerSettingsRequest(), metadata=other)
    assert (untouched.duplicate_threshold, untouched.merge_retention_days) == (70, 30)


async def test_the_environment_is_the_default_until_a_tenant_sets_one(
    calls: Calls, token_issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    never, other_setting, pinned = (token_issuer.metadata(tenant()) for _ in range(3))
    await calls.settings(other_setting, title_case_names=True)  # has a row, but no threshold of its own
    await calls.settings(pinned, duplicate_threshold=70, merge_retention_days=30)  # the defaults, pinned
    monkeypatch.setenv("CUSTOMER_DUPLICATE_THRESHOLD", "55")
    monkeypatch.setenv("CUSTOMER_MERGE_RETENTION_DAYS", "90")
    for md in (never, other_setting):
        s = await calls.contacts.GetCustomerSettings(cpb.GetCustomerSettingsRequest(), metadata=md)
        assert (s.duplicate_threshold, s.merge_retention_days) == (55, 90)
    s = await calls.contacts.GetCustomerSettings(cpb.GetCustomerSettingsRequest(), metadata=pinned)
    assert (s.duplicate_threshold, s.merge_retention_days) == (70, 30)
    monkeypatch.setenv("CUSTOMER_DUPLICATE_THRESHOLD", "0")  # malformed: the built-in default
    monkeypatch.setenv("CUSTOMER_MERGE_RETENTION_DAYS", "forever")
    s = await calls.contacts.GetCustomerSettings(cpb.GetCustomerSettingsRequest(), metadata=never)
    assert (s.duplicate_threshold, s.merge_retention_days) == (70, 30)


async def test_zero_resets_a_setting_to_the_service_default(
    calls: Calls, token_issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    md = token_issuer.metadata(tenant())
    monkeypatch.setenv("CUSTOMER_DUPLICATE_THRESHOLD", "55")
    s = await calls.settings(md, duplicate_threshold=80, merge_retention_days=7)
    assert (s.duplicate_threshold, s.merge_retention_days, s.version) == (80, 7, 1)
    s = await calls.settings(md, duplicate_threshold=0)
    assert (s.duplicate_threshold, s.merge_retention_days, s.version) == (55, 7, 2)
    # Reset, it follows the default again as the default changes; the other setting stays pinned.
    monkeypatch.setenv("CUSTOMER_DUPLICATE_THRESHOLD", "60")
    s = await calls.contacts.GetCustomerSettings(cpb.GetCustomerSettingsRequest(), metadata=md)
    assert (s.duplicate_threshold, s.merge_retention_days, s.version) == (60, 7, 2)
    assert (await calls.settings(md, duplicate_threshold=0)).version == 2  # already following: no change
    # Pinning the default's current value, then resetting it: the effective value stays, the row changes.
    assert (await calls.settings(md, duplicate_threshold=60)).version == 3
    s = await calls.settings(md, duplicate_threshold=0, merge_retention_days=0)
    assert (s.duplicate_threshold, s.merge_retention_days, s.version) == (60, 30, 4)
    monkeypatch.setenv("CUSTOMER_DUPLICATE_THRESHOLD", "65")
    s = await calls.contacts.GetCustomerSettings(cpb.GetCustomerSettingsRequest(), metadata=md)
    assert s.duplicate_threshold == 65


# --- the threshold on create and in FindDuplicates ----------------------------------------------------


async def test_the_threshold_is_the_tenants_own(calls: Calls, token_issuer: TokenIssuer) -> None:
    low, default, high = (token_issuer.metadata(tenant()) for _ in range(3))
    await calls.settings(low, duplicate_threshold=40)
    await calls.settings(high, duplicate_threshold=90)
    # The same data in each tenant: two people called 张伟 (the name alone: 40 points) and two contacts
    # sharing an email (70 points). Each tenant sees only its own contacts, at its own threshold.
    for md, names_match, emails_match in ((low, True, True), (default, False, True), (high, False, False)):
        name = await calls.create(md, last_name="张伟")
        same_name = await calls.create(md, last_name="张伟")
        mail = await calls.create(md, first_name="Ann", last_name="Lee", email="shared@x.example")
        same_mail = await calls.create(md, first_name="Bob", last_name="Kim", email="shared@x.example")
        assert [(c.contact_id, c.score) for c in same_name.duplicate_candidates] == (
            [(name.id, 40)] if names_match else []
        )
        assert [(c.contact_id, c.score) for c in same_mail.duplicate_candidates] == (
            [(mail.id, 70)] if emails_match else []
        )
        # FindDuplicates without min_score uses the tenant's threshold too; an explicit one still wins.
        for contact, twin, match in ((name, same_name, names_match), (mail, same_mail, emails_match)):
            listed = await calls.dedupe.FindDuplicates(pb.FindDuplicatesRequest(contact_id=contact.id), metadata=md)
            assert [c.contact_id for c in listed.items] == ([twin.id] if match else [])
            explicit = await calls.dedupe.FindDuplicates(
                pb.FindDuplicatesRequest(contact_id=contact.id, min_score=40), metadata=md
            )
            assert [c.contact_id for c in explicit.items] == [twin.id]

    # With the block policy the tenant's threshold decides what is refused.
    for md in (low, default, high):
        await calls.settings(md, duplicate_policy="block")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.create(low, last_name="张伟")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and set(violations(err.value)) == {"last_name"}
    assert (await calls.create(default, last_name="张伟")).id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.create(default, first_name="Cy", last_name="Ng", email="shared@x.example")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and set(violations(err.value)) == {"email"}
    assert (await calls.create(high, first_name="Cy", last_name="Ng", email="shared@x.example")).id


# --- retention -----------------------------------------------------------------------------------------


async def test_retention_sets_the_expire_time_of_new_merges(calls: Calls, token_issuer: TokenIssuer) -> None:
    md, other = token_issuer.metadata(tenant()), token_issuer.metadata(tenant())
    await calls.settings(md, merge_retention_days=7)
    first = await calls.merged(md, "Seven")
    assert first.expire_time.ToDatetime() - first.merge_time.ToDatetime() == timedelta(days=7)
    assert first.state == "active" and first.duplicate.department == "Duplicate Dept"
    theirs = await calls.merged(other, "Thirty")  # another tenant: the default
    assert theirs.expire_time.ToDatetime() - theirs.merge_time.ToDatetime() == timedelta(days=30)
    await calls.settings(md, merge_retention_days=90)
    second = await calls.merged(md, "Ninety")
    assert second.expire_time.ToDatetime() - second.merge_time.ToDatetime() == timedelta(days=90)
    # A merge keeps the window it was given.
    listed = await calls.dedupe.ListContactMerges(
        pb.ListContactMergesRequest(contact_id=first.survivor_id), metadata=md
    )
    assert [(m.id, m.expire_time, m.state) for m in listed.items] == [(first.id, first.expire_time, "active")]


# --- the purge -----------------------------------------------------------------------------------------


async def test_the_purge_empties_expired_snapshots_of_every_tenant(
    calls: Calls, customer: ServiceRuntime, token_issuer: TokenIssuer
) -> None:
    made: dict[str, tuple[pb.ContactMerge, pb.ContactMerge]] = {}
    for t in (tenant(), tenant()):
        md = token_issuer.metadata(t)
        old, kept = await calls.merged(md, "Old"), await calls.merged(md, "Kept")
        await expire(customer, t, old.id)
        made[t] = (old, kept)
    t1 = next(iter(made))
    md = token_issuer.metadata(t1)
    old, kept = made[t1]
    # Expired, not purged yet: the replies already show no more of the person than the id.
    [item] = (
        await calls.dedupe.ListContactMerges(pb.ListContactMergesRequest(contact_id=old.survivor_id), metadata=md)
    ).items
    assert (item.state, item.duplicate, item.HasField("purge_time")) == (
        "expired",
        cpb.Contact(id=old.duplicate_id),
        False,
    )

    if customer.db.dialect == "postgresql":  # the service's own connection: the app role, bound by RLS
        async with customer.db.engine.connect() as connection:
            assert (await connection.execute(text("SELECT current_user"))).scalar() == APP_ROLE
            assert (await connection.execute(text("SELECT count(*) FROM contact_merges"))).scalar() == 0
    assert await merge.purge_expired(customer.db) == 2
    assert await merge.purge_expired(customer.db) == 0  # nothing left to do

    for t, (gone, alive) in made.items():
        row = await stored(customer, t, gone.id)
        assert (row.duplicate_snapshot, row.survivor_before, row.survivor_after) == ({}, {}, {})
        assert row.purge_time is not None and row.purge_time >= row.expire_time
        # Who merged what and when is kept.
        assert (row.survivor_id, row.duplicate_id, row.merged_by) == (gone.survivor_id, gone.duplicate_id, "user-1")
        assert row.field_choices == {"department": "duplicate"} and row.unmerge_time is None
        assert int(row.merge_time.timestamp()) == gone.merge_time.seconds
        intact = await stored(customer, t, alive.id)
        assert intact.purge_time is None and intact.duplicate_snapshot["department"] == "Duplicate Dept"
        assert intact.survivor_before["job_title"] == "Survivor"
        assert intact.survivor_after["department"] == "Duplicate Dept"

    # The replies and the export cope with a purged merge; it can no longer be undone.
    [item] = (
        await calls.dedupe.ListContactMerges(pb.ListContactMergesRequest(contact_id=old.survivor_id), metadata=md)
    ).items
    assert (item.id, item.state, item.duplicate, item.merged_by) == (
        old.id,
        "expired",
        cpb.Contact(id=old.duplicate_id),
        "user-1",
    )
    assert (
        item.purge_time.seconds > 0
        and item.merge_time == old.merge_time
        and dict(item.field_choices) == {"department": "duplicate"}
    )
    [active] = (
        await calls.dedupe.ListContactMerges(pb.ListContactMergesRequest(contact_id=kept.survivor_id), metadata=md)
    ).items
    assert (active.state, active.duplicate.department, active.HasField("purge_time")) == (
        "active",
        "Duplicate Dept",
        False,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.dedupe.UnmergeContacts(pb.UnmergeContactsRequest(merge_id=old.id), metadata=md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and set(violations(err.value)) == {"merge_id"}
    exported = await calls.export.ExportPersonalData(
        personal_data_pb2.ExportPersonalDataRequest(contact_id=old.survivor_id), metadata=md
    )
    [entry] = json_format.MessageToDict(exported.data)["merges"]
    assert (entry["id"], entry["state"], entry["duplicate_snapshot"], entry["survivor_before"]) == (
        old.id,
        "expired",
        {},
        {},
    )
    assert entry["duplicate_id"] == old.duplicate_id and entry["purge_time"]
    # An unexpired merge still undoes.
    undone = await calls.dedupe.UnmergeContacts(pb.UnmergeContactsRequest(merge_id=kept.id), metadata=md)
    assert undone.state == "unmerged" and undone.duplicate.department == "Duplicate Dept"


async def test_the_purge_function_can_do_nothing_else(
    calls: Calls, customer: ServiceRuntime, token_issuer: TokenIssuer
) -> None:
    if customer.db.dialect != "postgresql":
        pytest.skip("the SECURITY DEFINER function is PostgreSQL's")
    t = tenant()
    kept = await calls.merged(token_issuer.metadata(t), "Future")
    # A caller whose clock is far ahead purges nothing before its time: the database's clock bounds it.
    assert await merge.purge_expired(customer.db, now=utcnow() + timedelta(days=10_000)) == 0
    row = await stored(customer, t, kept.id)
    assert row.purge_time is None and row.duplicate_snapshot["department"] == "Duplicate Dept"
    async with customer.db.engine.begin() as connection:
        # Outside the function the app role reaches no tenant's merges without its tenant.
        result: Any = await connection.execute(text("UPDATE contact_merges SET duplicate_snapshot = '{}'::json"))
        assert result.rowcount == 0
        acl = (
            await connection.execute(
                text("SELECT proacl::text[] FROM pg_proc WHERE proname = 'crm_purge_merge_snapshots'")
            )
        ).scalar()
    assert not any(entry.startswith("=") for entry in acl)  # PUBLIC may not call it
    assert any(entry.startswith(f"{APP_ROLE}=X") for entry in acl)


async def test_the_operator_command(
    urls: DatabaseUrls,
    calls: Calls,
    customer: ServiceRuntime,
    token_issuer: TokenIssuer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    t = tenant()
    old = await calls.merged(token_issuer.metadata(t), "Command")
    await expire(customer, t, old.id)
    await purge_merges(argparse.Namespace(), ServiceSettings(database_url=urls.app), KitSettings())
    assert "emptied the snapshots of 1 expired contact merges" in capsys.readouterr().out
    assert (await stored(customer, t, old.id)).duplicate_snapshot == {}


async def test_the_service_purges_by_itself(
    urls: DatabaseUrls, nats_url: str, calls: Calls, customer: ServiceRuntime, token_issuer: TokenIssuer
) -> None:
    assert [(c.name, c.interval) for c in SPEC.chores] == [("purge-merges", 3600.0)]
    t = tenant()
    old = await calls.merged(token_issuer.metadata(t), "Chore")
    await expire(customer, t, old.id)
    # The service as it runs, but with the first round at once (not a minute after start).
    eager = replace(SPEC, chores=[replace(c, first_delay=0) for c in SPEC.chores])
    rt = await start_service(eager, urls, nats_url=nats_url, verifier=token_issuer.verifier())
    try:
        for _ in range(200):
            if (await stored(customer, t, old.id)).purge_time is not None:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the service's chore did not purge the expired merge")
    finally:
        await rt.stop()
    assert (await stored(customer, t, old.id)).survivor_before == {}


# --- PostgreSQL with an owner bound by row-level security, as in production ----------------------------


@pytest.fixture
def restricted_owner(db_backend: str, urls: DatabaseUrls) -> Iterator[DatabaseUrls]:
    """A database owned by a role that is no superuser (so FORCE ROW LEVEL SECURITY binds it), migrated by
    it; the service connects as the app role."""
    if db_backend != "postgres":
        pytest.skip("PostgreSQL only")
    suffix = uuid.uuid4().hex[:8]
    role, password, name = f"crmt_owner_{suffix}", f"pw-{suffix}", f"crmt_owned_{suffix}"
    admin = create_engine(
        make_url(postgres_url() or "").set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' NOSUPERUSER NOBYPASSRLS"))
        connection.execute(text(f'CREATE DATABASE "{name}" OWNER {role}'))
    owner = make_url(urls.owner).set(database=name, username=role, password=password)
    app = make_url(urls.app).set(database=name)
    try:
        yield DatabaseUrls(
            app=app.render_as_string(hide_password=False),
            owner=owner.render_as_string(hide_password=False),
            app_role=urls.app_role,
        )
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


async def test_the_purge_with_an_owner_bound_by_rls(
    restricted_owner: DatabaseUrls, nats_url: str, token_issuer: TokenIssuer
) -> None:
    rt = await start_service(QUIET, restricted_owner, nats_url=nats_url, verifier=token_issuer.verifier())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") as channel:
            owned = Calls(channel)
            made = []
            for t in (tenant(), tenant()):
                md = token_issuer.metadata(t)
                old, kept = await owned.merged(md, "Owned"), await owned.merged(md, "Kept")
                await expire(rt, t, old.id)
                made.append((t, old, kept))
            assert await merge.purge_expired(rt.db) == 2
            for t, old, kept in made:
                assert (await stored(rt, t, old.id)).duplicate_snapshot == {}
                assert (await stored(rt, t, kept.id)).duplicate_snapshot["department"] == "Duplicate Dept"
    finally:
        await rt.stop()
