"""crm.common.v1.AuditService as every service serves it, over real gRPC, with the services' real
migrations: managers and admins only, newest first, paginated, filtered by entity, record, actor and time,
tenant-isolated; and on PostgreSQL the application role cannot rewrite the log."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from crm.common.v1 import audit_pb2, audit_pb2_grpc
from crm.customer.v1 import customer_pb2 as cpb
from crm.customer.v1 import customer_pb2_grpc
from crm.sales.v1 import sales_pb2 as spb
from crm.sales.v1 import sales_pb2_grpc
from crm_customer.app import SPEC as CUSTOMER
from crm_kit.context import tenant_scope
from crm_kit.db import Database
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory, DatabaseUrls
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer
from crm_sales.app import SPEC as SALES

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Customer:
    runtime: ServiceRuntime
    urls: DatabaseUrls
    contacts: customer_pb2_grpc.CustomerServiceStub
    audit: audit_pb2_grpc.AuditServiceStub


@pytest.fixture(scope="module")
async def customer(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[Customer]:
    urls = database_factory.create("customer")
    rt = await start_service(CUSTOMER, urls, nats_url=nats_url, verifier=token_issuer.verifier())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") as channel:
        yield Customer(
            rt, urls, customer_pb2_grpc.CustomerServiceStub(channel), audit_pb2_grpc.AuditServiceStub(channel)
        )
    await rt.stop()


@dataclass
class People:
    tenant: str
    alice_id: str
    alice: Metadata
    manager: Metadata
    admin: Metadata


def people_of(token_issuer: TokenIssuer) -> People:
    t = f"t{uuid.uuid4().hex[:12]}"
    alice = str(uuid.uuid4())
    return People(
        t,
        alice,
        token_issuer.metadata(t, subject=alice, roles=("member",)),
        token_issuer.metadata(t, subject=str(uuid.uuid4()), roles=("manager",)),
        token_issuer.metadata(t, subject=str(uuid.uuid4()), roles=("admin",)),
    )


@pytest.fixture
def people(token_issuer: TokenIssuer) -> People:
    return people_of(token_issuer)


async def violations(call: object, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> set[str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    status = rpc_status.from_call(err.value)  # type: ignore[arg-type]
    fields: set[str] = set()
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields |= {v.field for v in bad.field_violations}
    return fields


async def contact_history(c: Customer, p: People) -> cpb.Contact:
    """Alice creates, renames and deletes a contact."""
    created = await c.contacts.CreateContact(
        cpb.CreateContactRequest(contact=cpb.Contact(first_name="Ada", last_name="Lovelace", email="ada@example.com")),
        metadata=p.alice,
    )
    await c.contacts.UpdateContact(
        cpb.UpdateContactRequest(
            contact=cpb.Contact(id=created.id, first_name="Augusta", version=1),
            update_mask=field_mask_pb2.FieldMask(paths=["first_name"]),
        ),
        metadata=p.alice,
    )
    await c.contacts.DeleteContact(cpb.DeleteContactRequest(id=created.id, version=2), metadata=p.alice)
    return created


async def test_managers_and_admins_read_the_history_of_a_record(customer: Customer, people: People) -> None:
    contact = await contact_history(customer, people)
    for reader in (people.manager, people.admin):
        reply = await customer.audit.ListAuditEntries(
            audit_pb2.ListAuditEntriesRequest(entity="contact", entity_id=contact.id), metadata=reader
        )
        assert [e.action for e in reply.entries] == ["delete", "update", "create"]  # newest first
        assert not reply.next_page_token
    deleted, updated, created = (json_format.MessageToDict(e, preserving_proto_field_name=True) for e in reply.entries)
    for entry in (deleted, updated, created):
        assert (entry["actor"], entry["actor_roles"], entry["entity"], entry["entity_id"]) == (
            people.alice_id,
            ["member"],
            "contact",
            contact.id,
        )
        assert len(entry["trace_id"]) == 32 and int(entry["trace_id"], 16)
    assert "before" not in created
    assert {k: created["after"][k] for k in ("first_name", "last_name", "email", "owner_id")} == {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@example.com",
        "owner_id": people.alice_id,
    }
    assert (updated["before"], updated["after"]) == ({"first_name": "Ada"}, {"first_name": "Augusta"})
    assert "after" not in deleted and deleted["before"]["first_name"] == "Augusta"
    assert deleted["before"]["version"] == 2
    times = [e.time.ToDatetime() for e in reply.entries]
    assert times == sorted(times, reverse=True)


async def test_members_may_not_read_the_audit_log(customer: Customer, people: People) -> None:
    await contact_history(customer, people)
    assert (
        await violations(
            customer.audit.ListAuditEntries(audit_pb2.ListAuditEntriesRequest(), metadata=people.alice),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        == set()
    )


async def test_filters_and_pages(customer: Customer, people: People) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    first = await contact_history(customer, people)
    second = await contact_history(customer, people)
    await customer.contacts.CreateContact(
        cpb.CreateContactRequest(contact=cpb.Contact(first_name="By", last_name="Manager")), metadata=people.manager
    )
    after = datetime.now(UTC) + timedelta(seconds=1)
    audit = customer.audit

    async def ids(**filters: object) -> list[str]:
        out: list[str] = []
        token = ""
        while True:
            reply = await audit.ListAuditEntries(
                audit_pb2.ListAuditEntriesRequest(page_size=2, page_token=token, **filters),  # type: ignore[arg-type]
                metadata=people.manager,
            )
            assert len(reply.entries) <= 2
            out += [e.id for e in reply.entries]
            token = reply.next_page_token
            if not token:
                return out

    everything = await ids()
    assert len(everything) == 7 and everything == sorted(everything, reverse=True)
    assert len(await ids(entity="contact")) == 7
    assert await ids(entity="account") == []
    assert len(await ids(entity_id=first.id)) == 3 and len(await ids(entity_id=second.id)) == 3
    assert len(await ids(actor=people.alice_id)) == 6
    stamp = before.isoformat().replace("+00:00", "Z")
    assert len(await ids(start_time=stamp, end_time=after.isoformat())) == 7
    assert await ids(end_time=stamp) == []
    assert await ids(start_time=after.isoformat()) == []

    page = await audit.ListAuditEntries(audit_pb2.ListAuditEntriesRequest(page_size=1), metadata=people.manager)
    other_filters = audit_pb2.ListAuditEntriesRequest(page_size=1, page_token=page.next_page_token, entity="x")
    assert await violations(audit.ListAuditEntries(other_filters, metadata=people.manager)) == {"page_token"}
    bad = audit_pb2.ListAuditEntriesRequest(
        page_size=501, start_time="yesterday", end_time="2025-01-01T00:00:00", entity="x" * 200
    )
    assert await violations(audit.ListAuditEntries(bad, metadata=people.manager)) == {
        "start_time",
        "end_time",
        "entity",
    }
    assert await violations(
        audit.ListAuditEntries(audit_pb2.ListAuditEntriesRequest(page_size=501), metadata=people.manager)
    ) == {"page_size"}
    backwards = audit_pb2.ListAuditEntriesRequest(start_time=after.isoformat(), end_time=stamp)
    assert await violations(audit.ListAuditEntries(backwards, metadata=people.manager)) == {"end_time"}


async def test_entries_are_tenant_isolated(customer: Customer, people: People, token_issuer: TokenIssuer) -> None:
    contact = await contact_history(customer, people)
    other = people_of(token_issuer)
    for request in (
        audit_pb2.ListAuditEntriesRequest(),
        audit_pb2.ListAuditEntriesRequest(entity_id=contact.id),
        audit_pb2.ListAuditEntriesRequest(actor=people.alice_id),
    ):
        assert list((await customer.audit.ListAuditEntries(request, metadata=other.admin)).entries) == []
    mine = await customer.audit.ListAuditEntries(audit_pb2.ListAuditEntriesRequest(), metadata=people.admin)
    assert len(mine.entries) == 3


async def test_the_app_role_cannot_rewrite_the_log(customer: Customer, people: People, db_backend: str) -> None:
    if db_backend != "postgres":
        pytest.skip("roles and grants are PostgreSQL's (SQLite refuses with triggers, see test_audit.py)")
    contact = await contact_history(customer, people)
    db = Database(customer.urls.app)  # what the service connects as, after its real migrations
    try:
        with tenant_scope(people.tenant):
            for sql in (
                "UPDATE audit_log SET actor = 'someone-else'",
                "UPDATE audit_log SET before = NULL, after = NULL",
                "DELETE FROM audit_log",
                "TRUNCATE audit_log",
            ):
                with pytest.raises(DBAPIError, match="permission denied"):
                    async with db.transaction() as s:
                        await s.execute(text(sql))
            async with db.transaction() as s:
                assert await s.scalar(text("SELECT current_user")) == customer.urls.app_role
                count = await s.scalar(text("SELECT count(*) FROM audit_log WHERE entity_id = :id"), {"id": contact.id})
                assert count == 3
    finally:
        await db.dispose()


async def test_other_services_serve_their_own_log(
    customer: Customer, people: People, database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SALES_CUSTOMER_ADDR", f"127.0.0.1:{customer.runtime.port}")
        sales = await start_service(
            SALES, database_factory.create("sales"), nats_url=nats_url, verifier=token_issuer.verifier()
        )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sales.port}") as channel:
            opp = await sales_pb2_grpc.SalesServiceStub(channel).CreateOpportunity(
                spb.CreateOpportunityRequest(opportunity=spb.Opportunity(name="Engine", amount="10")),
                metadata=people.alice,
            )
            reply = await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEntries(
                audit_pb2.ListAuditEntriesRequest(entity="opportunity"), metadata=people.manager
            )
    finally:
        await sales.stop()
    (entry,) = reply.entries
    assert (entry.action, entry.entity_id, entry.actor) == ("create", opp.id, people.alice_id)
    assert entry.after["name"] == "Engine" and entry.after["owner_id"] == people.alice_id
