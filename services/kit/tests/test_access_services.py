"""Record-level access enforced by the services themselves, over real gRPC with members' and managers'
tokens: customer contacts, sales opportunities, and servicedesk tickets, which may only name contacts the
caller can see (the contact check asks the customer service with the caller's own token)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from crm.customer.v1 import customer_pb2 as cpb
from crm.customer.v1 import customer_pb2_grpc
from crm.sales.v1 import sales_pb2 as spb
from crm.sales.v1 import sales_pb2_grpc
from crm.servicedesk.v1 import servicedesk_pb2 as dpb
from crm.servicedesk.v1 import servicedesk_pb2_grpc
from crm_customer.app import SPEC as CUSTOMER
from crm_kit.context import tenant_scope
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer
from crm_sales.app import CONTACTS as SALES_CONTACTS
from crm_sales.app import SPEC as SALES
from crm_servicedesk.app import SPEC as SERVICEDESK

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Services:
    customer: ServiceRuntime
    sales: ServiceRuntime
    servicedesk: ServiceRuntime
    contacts: customer_pb2_grpc.CustomerServiceStub
    opportunities: sales_pb2_grpc.SalesServiceStub
    tickets: servicedesk_pb2_grpc.ServicedeskServiceStub


@pytest.fixture(scope="module")
async def services(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[Services]:
    verifier = token_issuer.verifier()
    customer = await start_service(CUSTOMER, database_factory.create("customer"), nats_url=nats_url, verifier=verifier)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SALES_CUSTOMER_ADDR", f"127.0.0.1:{customer.port}")
        mp.setenv("SERVICEDESK_CUSTOMER_ADDR", f"127.0.0.1:{customer.port}")
        sales = await start_service(SALES, database_factory.create("sales"), nats_url=nats_url, verifier=verifier)
        desk = await start_service(
            SERVICEDESK, database_factory.create("servicedesk"), nats_url=nats_url, verifier=verifier
        )
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") for rt in (customer, sales, desk)]
    yield Services(
        customer,
        sales,
        desk,
        customer_pb2_grpc.CustomerServiceStub(channels[0]),
        sales_pb2_grpc.SalesServiceStub(channels[1]),
        servicedesk_pb2_grpc.ServicedeskServiceStub(channels[2]),
    )
    for channel in channels:
        await channel.close(None)
    for rt in (desk, sales, customer):
        await rt.stop()


@dataclass
class People:
    """Two members and a manager of a fresh tenant; user ids are UUIDs, as the gateway's are."""

    tenant: str
    alice: Metadata
    bob: Metadata
    manager: Metadata
    alice_id: str
    bob_id: str


@pytest.fixture
def people(token_issuer: TokenIssuer) -> People:
    t = f"t{uuid.uuid4().hex[:12]}"
    alice, bob, mia = (str(uuid.uuid4()) for _ in range(3))
    return People(
        t,
        token_issuer.metadata(t, subject=alice, roles=("member",)),
        token_issuer.metadata(t, subject=bob, roles=("member",)),
        token_issuer.metadata(t, subject=mia, roles=("manager",)),
        alice,
        bob,
    )


async def fails(call: object, code: grpc.StatusCode) -> dict[str, str]:
    """Await the call, expect `code`; the field violations it carried."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    status = rpc_status.from_call(err.value)  # type: ignore[arg-type]
    found: dict[str, str] = {}
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update({v.field: v.description for v in bad.field_violations})
    return found


async def new_contact(s: Services, md: Metadata, first: str, owner: str = "") -> cpb.Contact:
    contact = cpb.Contact(first_name=first, last_name="Test", owner_id=owner)
    return await s.contacts.CreateContact(cpb.CreateContactRequest(contact=contact), metadata=md)


async def contact_names(s: Services, md: Metadata, **filters: str) -> list[str]:
    out: list[str] = []
    token = ""
    while True:
        page = await s.contacts.ListContacts(
            cpb.ListContactsRequest(page_size=1, page_token=token, **filters), metadata=md
        )
        out += [c.first_name for c in page.contacts]
        token = page.next_page_token
        if not token:
            return sorted(out)


async def test_members_see_and_edit_only_their_own_contacts(services: Services, people: People) -> None:
    s = services
    ann = await new_contact(s, people.alice, "Ann")
    await new_contact(s, people.alice, "Amy")
    ben = await new_contact(s, people.bob, "Ben")
    assert (ann.owner_id, ben.owner_id) == (people.alice_id, people.bob_id)

    assert await contact_names(s, people.alice) == ["Amy", "Ann"]
    assert await contact_names(s, people.alice, owner_id=people.bob_id) == []
    assert await contact_names(s, people.bob) == ["Ben"]
    assert await contact_names(s, people.manager) == ["Amy", "Ann", "Ben"]
    assert await contact_names(s, people.manager, owner_id=people.bob_id) == ["Ben"]

    md = people.alice
    await fails(s.contacts.GetContact(cpb.GetContactRequest(id=ben.id), metadata=md), grpc.StatusCode.NOT_FOUND)
    change = cpb.Contact(id=ben.id, first_name="Hijacked")
    mask = field_mask_pb2.FieldMask(paths=["first_name"])
    await fails(
        s.contacts.UpdateContact(cpb.UpdateContactRequest(contact=change, update_mask=mask), metadata=md),
        grpc.StatusCode.NOT_FOUND,
    )
    await fails(s.contacts.DeleteContact(cpb.DeleteContactRequest(id=ben.id), metadata=md), grpc.StatusCode.NOT_FOUND)

    still = await s.contacts.GetContact(cpb.GetContactRequest(id=ben.id), metadata=people.manager)
    assert (still.first_name, still.version) == ("Ben", 1)
    renamed = await s.contacts.UpdateContact(
        cpb.UpdateContactRequest(contact=cpb.Contact(id=ann.id, first_name="Anna"), update_mask=mask), metadata=md
    )
    assert renamed.first_name == "Anna"
    await s.contacts.DeleteContact(cpb.DeleteContactRequest(id=ann.id), metadata=md)
    assert await contact_names(s, people.alice) == ["Amy"]


async def test_only_managers_assign_contacts_to_someone_else(services: Services, people: People) -> None:
    s = services
    violations = await fails(
        new_contact(s, people.alice, "For Bob", owner=people.bob_id), grpc.StatusCode.PERMISSION_DENIED
    )
    assert set(violations) == {"owner_id"}
    own = await new_contact(s, people.alice, "Mine", owner=people.alice_id)
    give = cpb.UpdateContactRequest(
        contact=cpb.Contact(id=own.id, owner_id=people.bob_id), update_mask=field_mask_pb2.FieldMask(paths=["owner_id"])
    )
    assert set(
        await fails(s.contacts.UpdateContact(give, metadata=people.alice), grpc.StatusCode.PERMISSION_DENIED)
    ) == {"owner_id"}
    assert (
        await s.contacts.GetContact(cpb.GetContactRequest(id=own.id), metadata=people.alice)
    ).owner_id == people.alice_id

    moved = await s.contacts.UpdateContact(give, metadata=people.manager)
    assert moved.owner_id == people.bob_id
    assert await contact_names(s, people.alice) == []
    assert await contact_names(s, people.bob) == ["Mine"]
    assigned = await new_contact(s, people.manager, "Assigned", owner=people.alice_id)
    assert assigned.owner_id == people.alice_id
    assert await contact_names(s, people.alice) == ["Assigned"]


async def new_opportunity(
    s: Services, md: Metadata, name: str, contact_id: str = "", owner: str = ""
) -> spb.Opportunity:
    opp = spb.Opportunity(name=name, contact_id=contact_id, owner_id=owner, amount="100")
    return await s.opportunities.CreateOpportunity(spb.CreateOpportunityRequest(opportunity=opp), metadata=md)


async def opportunity_names(s: Services, md: Metadata) -> list[str]:
    page = await s.opportunities.ListOpportunities(spb.ListOpportunitiesRequest(page_size=500), metadata=md)
    return sorted(o.name for o in page.opportunities)


async def test_members_see_and_edit_only_their_own_opportunities(services: Services, people: People) -> None:
    s = services
    mine = await new_opportunity(s, people.alice, "Alice's deal")
    bobs = await new_opportunity(s, people.bob, "Bob's deal")
    assert (mine.owner_id, bobs.owner_id) == (people.alice_id, people.bob_id)
    assert await opportunity_names(s, people.alice) == ["Alice's deal"]
    assert await opportunity_names(s, people.manager) == ["Alice's deal", "Bob's deal"]

    md = people.alice
    not_found = grpc.StatusCode.NOT_FOUND
    await fails(s.opportunities.GetOpportunity(spb.GetOpportunityRequest(id=bobs.id), metadata=md), not_found)
    for paths, change in (
        (["name"], spb.Opportunity(id=bobs.id, name="Hijacked")),
        (["contact_id"], spb.Opportunity(id=bobs.id, contact_id="")),
    ):
        request = spb.UpdateOpportunityRequest(opportunity=change, update_mask=field_mask_pb2.FieldMask(paths=paths))
        await fails(s.opportunities.UpdateOpportunity(request, metadata=md), not_found)
    await fails(s.opportunities.DeleteOpportunity(spb.DeleteOpportunityRequest(id=bobs.id), metadata=md), not_found)
    violations = await fails(new_opportunity(s, md, "For Bob", owner=people.bob_id), grpc.StatusCode.PERMISSION_DENIED)
    assert set(violations) == {"owner_id"}

    reassigned = await s.opportunities.UpdateOpportunity(
        spb.UpdateOpportunityRequest(
            opportunity=spb.Opportunity(id=bobs.id, owner_id=people.alice_id),
            update_mask=field_mask_pb2.FieldMask(paths=["owner_id"]),
        ),
        metadata=people.manager,
    )
    assert reassigned.owner_id == people.alice_id
    assert await opportunity_names(s, people.alice) == ["Alice's deal", "Bob's deal"]
    assert await opportunity_names(s, people.bob) == []


async def known_to_sales(s: Services, tenant: str, contact_id: str) -> bool:
    with tenant_scope(tenant):
        async with s.sales.db.transaction() as session:
            return await SALES_CONTACTS.lookup(session, contact_id) is not None


async def test_members_cannot_link_records_to_contacts_they_cannot_see(services: Services, people: People) -> None:
    s = services
    ann = await new_contact(s, people.alice, "Ann")
    ben = await new_contact(s, people.bob, "Ben")

    # Unknown to sales yet, or already projected from customer's events: either way customer decides.
    for _ in range(2):
        violations = await fails(new_opportunity(s, people.alice, "On Ben", ben.id), grpc.StatusCode.INVALID_ARGUMENT)
        assert set(violations) == {"contact_id"}
        deadline = asyncio.get_running_loop().time() + 15
        while not await known_to_sales(s, people.tenant, ben.id):
            assert asyncio.get_running_loop().time() < deadline, "the contact never reached sales"
            await asyncio.sleep(0.05)

    on_ann = await new_opportunity(s, people.alice, "On Ann", ann.id)
    assert on_ann.contact_name == "Ann Test"
    relink = spb.UpdateOpportunityRequest(
        opportunity=spb.Opportunity(id=on_ann.id, contact_id=ben.id),
        update_mask=field_mask_pb2.FieldMask(paths=["contact_id"]),
    )
    assert set(
        await fails(s.opportunities.UpdateOpportunity(relink, metadata=people.alice), grpc.StatusCode.INVALID_ARGUMENT)
    ) == {"contact_id"}
    by_manager = await new_opportunity(s, people.manager, "Manager on Ben", ben.id)
    assert by_manager.contact_name == "Ben Test"

    ticket = dpb.Ticket(contact_id=ben.id, subject="Help")
    violations = await fails(
        s.tickets.CreateTicket(dpb.CreateTicketRequest(ticket=ticket), metadata=people.alice),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(violations) == {"contact_id"}
    ok = await s.tickets.CreateTicket(
        dpb.CreateTicketRequest(ticket=dpb.Ticket(contact_id=ann.id, subject="Help")), metadata=people.alice
    )
    assert ok.contact_id == ann.id
    assert (
        await s.tickets.CreateTicket(dpb.CreateTicketRequest(ticket=ticket), metadata=people.bob)
    ).contact_id == ben.id
