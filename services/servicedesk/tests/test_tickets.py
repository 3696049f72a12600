"""The servicedesk service over a real gRPC channel, beside the real customer service: tickets (CRUD,
validation, versions, pagination, filters, tenant isolation), their outbox events, and contact checks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from crm.customer.v1 import customer_pb2 as cpb
from crm.customer.v1 import customer_pb2_grpc
from crm.servicedesk.v1 import servicedesk_pb2 as pb
from crm.servicedesk.v1 import servicedesk_pb2_grpc
from crm_customer.app import SPEC as CUSTOMER
from crm_kit.db.ids import uuid7
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.grpc import mask, outbox, violations
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer
from crm_servicedesk.app import SPEC

Stub = servicedesk_pb2_grpc.ServicedeskServiceStub


@pytest.fixture(scope="module")
async def customer(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[ServiceRuntime]:
    rt = await start_service(
        CUSTOMER, database_factory.create("customer"), nats_url=nats_url, verifier=token_issuer.verifier()
    )
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def servicedesk(
    customer: ServiceRuntime, database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[ServiceRuntime]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SERVICEDESK_CUSTOMER_ADDR", f"127.0.0.1:{customer.port}")
        rt = await start_service(
            SPEC, database_factory.create("servicedesk"), nats_url=nats_url, verifier=token_issuer.verifier()
        )
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def stub(servicedesk: ServiceRuntime) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servicedesk.port}") as channel:
        yield servicedesk_pb2_grpc.ServicedeskServiceStub(channel)


@pytest.fixture(scope="module")
async def customer_stub(customer: ServiceRuntime) -> AsyncIterator[customer_pb2_grpc.CustomerServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{customer.port}") as channel:
        yield customer_pb2_grpc.CustomerServiceStub(channel)


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def create(stub: Stub, md: Any, **fields: Any) -> pb.Ticket:
    fields.setdefault("subject", "Help")
    return await stub.CreateTicket(pb.CreateTicketRequest(ticket=pb.Ticket(**fields)), metadata=md)


async def test_crud_round_trip_with_chinese_text(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    description = "打印机无法连接。\n\n  已重启两次，仍然报错 E-42。"  # noqa: RUF001 (Chinese punctuation)
    t = await create(stub, md, subject="  打印机 故障 ", description=description)
    assert (t.subject, t.description, t.priority, t.status, t.channel, t.contact_id, t.version) == (
        "打印机 故障",
        description.strip(),
        "normal",
        "new",
        "web",
        "",
        1,
    )
    assert await stub.GetTicket(pb.GetTicketRequest(id=t.id), metadata=md) == t
    updated = await stub.UpdateTicket(
        pb.UpdateTicketRequest(
            ticket=pb.Ticket(id=t.id, status="Resolved", priority="low", version=1), update_mask=mask("status")
        ),
        metadata=md,
    )
    assert (updated.status, updated.priority, updated.version) == ("resolved", "normal", 2)
    await stub.DeleteTicket(pb.DeleteTicketRequest(id=t.id, version=2), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetTicket(pb.GetTicketRequest(id=t.id), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_every_invalid_field_is_named(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(
            stub,
            md,
            contact_id="bad id",
            subject="",
            description="x" * 10_001,
            priority="critical",
            status="done",
            channel="fax",
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {"contact_id", "subject", "description", "priority", "status", "channel"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, md, subject="长" * 256)
    assert set(violations(err.value)) == {"subject"}
    assert (await create(stub, md, subject="长" * 255, description="y" * 10_000, channel="walk_in")).channel == (
        "walk_in"
    )


async def test_stale_versions_are_aborted(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    t = await create(stub, md)
    await stub.UpdateTicket(
        pb.UpdateTicketRequest(ticket=pb.Ticket(id=t.id, status="open", version=1), update_mask=mask("status")),
        metadata=md,
    )
    for call in (
        stub.UpdateTicket(
            pb.UpdateTicketRequest(ticket=pb.Ticket(id=t.id, status="closed", version=1), update_mask=mask("status")),
            metadata=md,
        ),
        stub.DeleteTicket(pb.DeleteTicketRequest(id=t.id, version=1), metadata=md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert "version" in violations(err.value)


async def test_page_size_bounds_and_pagination(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    created = [(await create(stub, md, subject=f"工单 {i}")).id for i in range(120)]
    assert len((await stub.ListTickets(pb.ListTicketsRequest(page_size=0), metadata=md)).tickets) == 50
    for bad in (-1, 501):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListTickets(pb.ListTicketsRequest(page_size=bad), metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(violations(err.value)) == {"page_size"}
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListTickets(pb.ListTicketsRequest(page_size=50, page_token=token), metadata=md)
        seen.extend(t.id for t in page.tickets)
        token = page.next_page_token
        if not token:
            break
    assert seen == created


async def test_list_filters(
    stub: Stub, customer_stub: customer_pb2_grpc.CustomerServiceStub, token_issuer: TokenIssuer, tenant: str
) -> None:
    md = token_issuer.metadata(tenant)
    contact = await customer_stub.CreateContact(
        cpb.CreateContactRequest(contact=cpb.Contact(last_name="王")), metadata=md
    )
    a = await create(stub, md, priority="urgent", contact_id=contact.id)
    b = await create(stub, md, priority="urgent", status="open")
    c = await create(stub, md, status="open", contact_id=contact.id)

    async def ids(**filters: Any) -> list[str]:
        return [t.id for t in (await stub.ListTickets(pb.ListTicketsRequest(**filters), metadata=md)).tickets]

    assert await ids(priority="urgent") == [a.id, b.id]
    assert await ids(status="OPEN") == [b.id, c.id]
    assert await ids(contact_id=contact.id) == [a.id, c.id]
    assert await ids(contact_id=contact.id, status="open", priority="normal") == [c.id]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ids(priority="p1", status="stuck")
    assert set(violations(err.value)) == {"priority", "status"}


async def test_tenants_never_see_each_other(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    a, b = token_issuer.metadata(tenant), token_issuer.metadata(tenant + "b")
    t = await create(stub, a, subject="Secret")
    for call in (
        stub.GetTicket(pb.GetTicketRequest(id=t.id), metadata=b),
        stub.UpdateTicket(
            pb.UpdateTicketRequest(ticket=pb.Ticket(id=t.id, subject="X"), update_mask=mask("subject")), metadata=b
        ),
        stub.DeleteTicket(pb.DeleteTicketRequest(id=t.id), metadata=b),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert list((await stub.ListTickets(pb.ListTicketsRequest(), metadata=b)).tickets) == []
    assert (await stub.GetTicket(pb.GetTicketRequest(id=t.id), metadata=a)).subject == "Secret"


async def test_each_change_writes_its_event(
    stub: Stub, servicedesk: ServiceRuntime, token_issuer: TokenIssuer, tenant: str
) -> None:
    md = token_issuer.metadata(tenant)
    t = await create(stub, md, subject="Eventful")
    await stub.UpdateTicket(
        pb.UpdateTicketRequest(ticket=pb.Ticket(id=t.id, priority="high"), update_mask=mask("priority")),
        metadata=md,
    )
    await stub.DeleteTicket(pb.DeleteTicketRequest(id=t.id), metadata=md)
    events = await outbox(servicedesk.db, tenant)
    assert [e.type for e in events] == [
        "crm.servicedesk.ticket.created",
        "crm.servicedesk.ticket.updated",
        "crm.servicedesk.ticket.deleted",
    ]
    assert {e.subject for e in events} == {t.id}
    assert events[1].data["changed"] == ["priority"]
    assert events[1].data["ticket"]["priority"] == "high"


async def test_contacts_are_checked_with_the_customer_service(
    stub: Stub, customer_stub: customer_pb2_grpc.CustomerServiceStub, token_issuer: TokenIssuer, tenant: str
) -> None:
    md = token_issuer.metadata(tenant)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, md, contact_id=uuid7())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {"contact_id"}

    contact = await customer_stub.CreateContact(
        cpb.CreateContactRequest(contact=cpb.Contact(first_name="芳")), metadata=md
    )
    t = await create(stub, md, contact_id=contact.id)
    assert t.contact_id == contact.id
    # Another tenant cannot attach this contact: the customer service answers NOT_FOUND for it.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, token_issuer.metadata(tenant + "b"), contact_id=contact.id)
    assert set(violations(err.value)) == {"contact_id"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateTicket(
            pb.UpdateTicketRequest(ticket=pb.Ticket(id=t.id, contact_id=uuid7()), update_mask=mask("contact_id")),
            metadata=md,
        )
    assert set(violations(err.value)) == {"contact_id"}

    # Once the deleted event has reached the projection, the contact can no longer be attached.
    await customer_stub.DeleteContact(cpb.DeleteContactRequest(id=contact.id), metadata=md)
    for _ in range(300):
        try:
            await create(stub, md, contact_id=contact.id)
        except grpc.aio.AioRpcError as exc:
            assert set(violations(exc)) == {"contact_id"}
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the deleted contact was still accepted after 15 s")
    # A ticket that already refers to it can still be edited, with or without contact_id in the mask.
    edited = await stub.UpdateTicket(
        pb.UpdateTicketRequest(
            ticket=pb.Ticket(id=t.id, contact_id=contact.id, status="closed"), update_mask=mask("contact_id", "status")
        ),
        metadata=md,
    )
    assert (edited.status, edited.contact_id) == ("closed", contact.id)
