"""The history of owner, classification and lifecycle stage (rows written with the change, who and when),
and the tenant's customer settings (admin only; title-casing, default phone region, duplicate policy), on
SQLite and PostgreSQL over a real gRPC channel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from crm.customer.v1 import customer_pb2 as pb
from crm.customer.v1 import customer_pb2_grpc
from crm_customer.app import SPEC
from crm_customer.settings import get_settings
from crm_kit.context import tenant_scope
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.grpc import violations
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer

Stub = customer_pb2_grpc.CustomerServiceStub
ALICE = "0190a5f2-0000-7000-8000-0000000000a1"
BOB = "0190a5f2-0000-7000-8000-0000000000b2"


@pytest.fixture(scope="module")
async def customer(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[ServiceRuntime]:
    rt = await start_service(
        SPEC, database_factory.create("history"), nats_url=nats_url, verifier=token_issuer.verifier()
    )
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def stub(customer: ServiceRuntime) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{customer.port}") as channel:
        yield customer_pb2_grpc.CustomerServiceStub(channel)


async def update(stub: Stub, md: Any, contact: pb.Contact, *paths: str) -> pb.Contact:
    req = pb.UpdateContactRequest(contact=contact, update_mask=field_mask_pb2.FieldMask(paths=list(paths)))
    return await stub.UpdateContact(req, metadata=md)


async def history(stub: Stub, md: Any, contact_id: str, **kw: Any) -> list[pb.ContactFieldChange]:
    out: list[pb.ContactFieldChange] = []
    token = ""
    while True:
        page = await stub.ListContactHistory(
            pb.ListContactHistoryRequest(contact_id=contact_id, page_token=token, **kw), metadata=md
        )
        out.extend(page.changes)
        token = page.next_page_token
        if not token:
            return out


async def test_changes_are_recorded_with_who_and_when(stub: Stub, token_issuer: TokenIssuer) -> None:
    admin = token_issuer.metadata("t-hist", subject="admin-1")
    manager = token_issuer.metadata("t-hist", subject="manager-9", roles=("manager",))
    c = await stub.CreateContact(
        pb.CreateContactRequest(contact=pb.Contact(last_name="历史", owner_id=ALICE)), metadata=admin
    )
    created = await history(stub, admin, c.id)
    assert {(h.field, h.old_value, h.new_value, h.actor) for h in created} == {
        ("owner_id", "", ALICE, "admin-1"),
        ("classification", "", "general", "admin-1"),
        ("lifecycle_stage", "", "lead", "admin-1"),
    }
    await update(stub, manager, pb.Contact(id=c.id, owner_id=BOB, classification="core"), "owner_id", "classification")
    await update(stub, admin, pb.Contact(id=c.id, lifecycle_stage="prospect"), "lifecycle_stage")
    await update(
        stub, admin, pb.Contact(id=c.id, lifecycle_stage="customer", job_title="CTO"), "lifecycle_stage", "job_title"
    )
    # No change, no row; fields not tracked, no row.
    await update(
        stub, admin, pb.Contact(id=c.id, lifecycle_stage="customer", job_title="CEO"), "lifecycle_stage", "job_title"
    )

    rows = await history(stub, admin, c.id, page_size=2)
    newest = [(h.field, h.old_value, h.new_value, h.actor) for h in rows[:4]]
    assert newest == [
        ("lifecycle_stage", "prospect", "customer", "admin-1"),
        ("lifecycle_stage", "lead", "prospect", "admin-1"),
        ("classification", "general", "core", "manager-9"),
        ("owner_id", ALICE, BOB, "manager-9"),
    ]
    assert len(rows) == 7 and len({h.id for h in rows}) == 7
    assert all(h.contact_id == c.id and h.change_time.seconds > 0 for h in rows)
    assert [h.change_time.ToDatetime() for h in rows] == sorted(
        (h.change_time.ToDatetime() for h in rows), reverse=True
    )
    stages = await history(stub, admin, c.id, field="lifecycle_stage")
    assert [h.new_value for h in stages] == ["customer", "prospect", "lead"]


async def test_history_is_checked_and_isolated(stub: Stub, token_issuer: TokenIssuer) -> None:
    a, b = token_issuer.metadata("t-hist-a"), token_issuer.metadata("t-hist-b")
    c = await stub.CreateContact(pb.CreateContactRequest(contact=pb.Contact(last_name="A")), metadata=a)
    for md, contact_id in ((b, c.id), (a, "0190a5f2-0000-7000-8000-000000000000")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListContactHistory(pb.ListContactHistoryRequest(contact_id=contact_id), metadata=md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for req, field in (
        (pb.ListContactHistoryRequest(contact_id=""), "contact_id"),
        (pb.ListContactHistoryRequest(contact_id=c.id, field="email"), "field"),
        (pb.ListContactHistoryRequest(contact_id=c.id, page_size=501), "page_size"),
        (pb.ListContactHistoryRequest(contact_id=c.id, page_token="bogus"), "page_token"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListContactHistory(req, metadata=a)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violations(err.value)
    # A member sees the history of the contacts they own only.
    member = token_issuer.metadata("t-hist-a", subject=ALICE, roles=("member",))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListContactHistory(pb.ListContactHistoryRequest(contact_id=c.id), metadata=member)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_settings_are_admin_only(stub: Stub, token_issuer: TokenIssuer) -> None:
    for roles in (("member",), ("manager",)):
        md = token_issuer.metadata("t-set-roles", roles=roles)
        for call in (
            stub.GetCustomerSettings(pb.GetCustomerSettingsRequest(), metadata=md),
            stub.UpdateCustomerSettings(pb.UpdateCustomerSettingsRequest(title_case_names=True), metadata=md),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = token_issuer.metadata("t-set-roles")
    s = await stub.GetCustomerSettings(pb.GetCustomerSettingsRequest(), metadata=admin)
    assert (s.title_case_names, s.duplicate_policy, s.default_phone_region, s.version) == (False, "warn", "CN", 0)


async def test_settings_change_and_apply(stub: Stub, customer: ServiceRuntime, token_issuer: TokenIssuer) -> None:
    admin, other = token_issuer.metadata("t-set"), token_issuer.metadata("t-set-other")
    s = await stub.UpdateCustomerSettings(
        pb.UpdateCustomerSettingsRequest(title_case_names=True, default_phone_region="us"), metadata=admin
    )
    assert (s.title_case_names, s.duplicate_policy, s.default_phone_region, s.version) == (True, "warn", "US", 1)
    s = await stub.UpdateCustomerSettings(
        pb.UpdateCustomerSettingsRequest(duplicate_policy="BLOCK", version=1), metadata=admin
    )
    assert (s.title_case_names, s.duplicate_policy, s.version) == (True, "block", 2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateCustomerSettings(
            pb.UpdateCustomerSettingsRequest(title_case_names=False, version=1), metadata=admin
        )
    assert err.value.code() == grpc.StatusCode.ABORTED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateCustomerSettings(
            pb.UpdateCustomerSettingsRequest(duplicate_policy="ignore", default_phone_region="XX"), metadata=admin
        )
    assert {"duplicate_policy", "default_phone_region"} <= set(violations(err.value))
    # Other parts of the service read them.
    with tenant_scope("t-set"):
        async with customer.db.transaction() as session:
            assert (await get_settings(session)).duplicate_policy == "block"

    c = await stub.CreateContact(
        pb.CreateContactRequest(
            contact=pb.Contact(first_name="mary-jane", last_name="O'NEILL", phone="(415) 555-0132", email="M@X.COM")
        ),
        metadata=admin,
    )
    assert (c.first_name, c.last_name, c.display_name) == ("Mary-Jane", "O'Neill", "Mary-Jane O'Neill")
    assert (c.phone, c.email) == ("+14155550132", "m@x.com")
    kept = await update(
        stub, admin, pb.Contact(id=c.id, last_name="McDonald", first_name="张伟"), "last_name", "first_name"
    )
    assert (kept.first_name, kept.last_name) == ("张伟", "McDonald")
    # Another tenant keeps the defaults: names as written, numbers read in China.
    o = await stub.CreateContact(
        pb.CreateContactRequest(contact=pb.Contact(first_name="mary", last_name="o'neill", phone="138 0013 8000")),
        metadata=other,
    )
    assert (o.first_name, o.last_name, o.phone) == ("mary", "o'neill", "+8613800138000")
