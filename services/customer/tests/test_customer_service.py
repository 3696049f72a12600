"""The customer service over a real gRPC channel: normalisation, validation with field violations,
optimistic versions, pagination, filters, tenant isolation and outbox events."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import select

from crm.customer.v1 import customer_pb2 as pb
from crm.customer.v1 import customer_pb2_grpc
from crm_customer.app import SPEC
from crm_kit.context import system_scope
from crm_kit.db.system_tables import OutboxMessage
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.grpc import violations
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer


@pytest.fixture(scope="module")
async def customer(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[ServiceRuntime]:
    rt = await start_service(
        SPEC, database_factory.create("customer"), nats_url=nats_url, verifier=token_issuer.verifier()
    )
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def stub(customer: ServiceRuntime) -> AsyncIterator[customer_pb2_grpc.CustomerServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{customer.port}") as channel:
        yield customer_pb2_grpc.CustomerServiceStub(channel)


async def test_contacts_are_normalised(stub: customer_pb2_grpc.CustomerServiceStub, token_issuer: TokenIssuer) -> None:
    md = token_issuer.metadata("t-norm")
    c = await stub.CreateContact(
        pb.CreateContactRequest(
            contact=pb.Contact(
                first_name="  Li  ",
                last_name=" 雷 ",
                email=" Li.Lei@Example.COM ",
                phone="010 6552 9988",
                tags=["vip", "vip", " 北京 "],
            )
        ),
        metadata=md,
    )
    assert (c.first_name, c.last_name, c.email, c.phone) == ("Li", "雷", "li.lei@example.com", "+861065529988")
    assert list(c.tags) == ["vip", "北京"]
    assert c.version == 1 and c.id and c.create_time.seconds > 0


async def test_every_invalid_field_is_named(
    stub: customer_pb2_grpc.CustomerServiceStub, token_issuer: TokenIssuer
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateContact(
            pb.CreateContactRequest(contact=pb.Contact(email="nope@", phone="123", tags=["a,b"])),
            metadata=token_issuer.metadata("t-bad"),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"email", "phone", "tags[0]", "last_name"} <= set(violations(err.value))
    # A tag never holds what separates the tags of an import or export cell, so they round-trip.
    separated = ["ok", "a;b", "x|y", "上海、北京", "甲\uff1b乙", "丙\uff0c丁"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateContact(
            pb.CreateContactRequest(contact=pb.Contact(last_name="Li", tags=separated)),
            metadata=token_issuer.metadata("t-bad"),
        )
    assert set(violations(err.value)) == {f"tags[{i}]" for i in range(1, len(separated))}


async def test_update_with_mask_and_stale_version(
    stub: customer_pb2_grpc.CustomerServiceStub, token_issuer: TokenIssuer
) -> None:
    md = token_issuer.metadata("t-upd")
    c = await stub.CreateContact(
        pb.CreateContactRequest(contact=pb.Contact(first_name="A", last_name="B")), metadata=md
    )
    mask = field_mask_pb2.FieldMask(paths=["first_name"])
    updated = await stub.UpdateContact(
        pb.UpdateContactRequest(
            contact=pb.Contact(id=c.id, first_name="Alpha", last_name="ignored", version=1), update_mask=mask
        ),
        metadata=md,
    )
    assert (updated.first_name, updated.last_name, updated.version) == ("Alpha", "B", 2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateContact(
            pb.UpdateContactRequest(contact=pb.Contact(id=c.id, first_name="Late", version=1), update_mask=mask),
            metadata=md,
        )
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert "version" in violations(err.value)


async def test_pagination_is_complete_and_stable(
    stub: customer_pb2_grpc.CustomerServiceStub, token_issuer: TokenIssuer
) -> None:
    md = token_issuer.metadata("t-page")
    created = set()
    for i in range(120):
        c = await stub.CreateContact(
            pb.CreateContactRequest(contact=pb.Contact(last_name=f"P{i}", tags=["even" if i % 2 == 0 else "odd"])),
            metadata=md,
        )
        created.add(c.id)
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListContacts(pb.ListContactsRequest(page_size=50, page_token=token), metadata=md)
        seen.extend(c.id for c in page.contacts)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 120 and set(seen) == created
    evens = await stub.ListContacts(pb.ListContactsRequest(page_size=500, tag="even"), metadata=md)
    assert len(evens.contacts) == 60
    for bad in (-1, 501):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListContacts(pb.ListContactsRequest(page_size=bad), metadata=md)
        assert "page_size" in violations(err.value)


async def test_tenants_never_see_each_other(
    stub: customer_pb2_grpc.CustomerServiceStub, token_issuer: TokenIssuer
) -> None:
    a, b = token_issuer.metadata("t-iso-a"), token_issuer.metadata("t-iso-b")
    c = await stub.CreateContact(pb.CreateContactRequest(contact=pb.Contact(last_name="Secret")), metadata=a)
    for call in (
        stub.GetContact(pb.GetContactRequest(id=c.id), metadata=b),
        stub.DeleteContact(pb.DeleteContactRequest(id=c.id), metadata=b),
        stub.UpdateContact(
            pb.UpdateContactRequest(
                contact=pb.Contact(id=c.id, last_name="X"), update_mask=field_mask_pb2.FieldMask(paths=["last_name"])
            ),
            metadata=b,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await stub.ListContacts(pb.ListContactsRequest(), metadata=b)).contacts == []
    assert (await stub.GetContact(pb.GetContactRequest(id=c.id), metadata=a)).last_name == "Secret"


async def test_each_change_writes_one_event(
    stub: customer_pb2_grpc.CustomerServiceStub, customer: ServiceRuntime, token_issuer: TokenIssuer
) -> None:
    md = token_issuer.metadata("t-events")
    c = await stub.CreateContact(pb.CreateContactRequest(contact=pb.Contact(last_name="E")), metadata=md)
    await stub.UpdateContact(
        pb.UpdateContactRequest(
            contact=pb.Contact(id=c.id, last_name="F"), update_mask=field_mask_pb2.FieldMask(paths=["last_name"])
        ),
        metadata=md,
    )
    await stub.DeleteContact(pb.DeleteContactRequest(id=c.id), metadata=md)
    with system_scope():
        async with customer.db.transaction() as s:
            types = (
                await s.scalars(
                    select(OutboxMessage.type).where(OutboxMessage.tenant_id == "t-events").order_by(OutboxMessage.id)
                )
            ).all()
    assert types == ["crm.customer.contact.created", "crm.customer.contact.updated", "crm.customer.contact.deleted"]
