"""Timeline entries learned from the other services' events: the real sales and servicedesk services on the
same nats-server as customer, and hand-published CloudEvents for the producers that do not exist yet
(orders, complaints, campaign responses, a brand-new entity). Entries are read-only, idempotent per
event, kept for contacts customer does not know, and never visible to another tenant."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import func, select

from crm.customer.v1 import customer_pb2 as cpb
from crm.customer.v1 import customer_pb2_grpc, dedupe_pb2_grpc, timeline_pb2_grpc
from crm.customer.v1 import dedupe_pb2 as dpb
from crm.customer.v1 import timeline_pb2 as pb
from crm.sales.v1 import sales_pb2, sales_pb2_grpc
from crm.servicedesk.v1 import servicedesk_pb2, servicedesk_pb2_grpc
from crm_customer import timeline
from crm_customer.app import SPEC as CUSTOMER
from crm_customer.timeline import Interaction
from crm_kit.context import tenant_scope
from crm_kit.db.ids import uuid7
from crm_kit.events.envelope import CONTENT_TYPE, Event
from crm_kit.events.relay import MSG_ID_HEADER
from crm_kit.events.stream import DEFAULT_STREAM
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer
from crm_sales.app import SPEC as SALES
from crm_servicedesk.app import SPEC as SERVICEDESK

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]
WAIT = 60.0  # the consumer may first work through the stream's backlog from earlier test modules


@pytest.fixture(scope="module")
async def services(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[dict[str, ServiceRuntime]]:
    verifier = token_issuer.verifier()
    started: dict[str, ServiceRuntime] = {}
    started["customer"] = await start_service(
        CUSTOMER, database_factory.create("customer"), nats_url=nats_url, verifier=verifier
    )
    address = f"127.0.0.1:{started['customer'].port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SALES_CUSTOMER_ADDR", address)
        mp.setenv("SERVICEDESK_CUSTOMER_ADDR", address)
        for spec in (SALES, SERVICEDESK):
            started[spec.name] = await start_service(
                spec, database_factory.create(spec.name), nats_url=nats_url, verifier=verifier
            )
    yield started
    for rt in reversed(list(started.values())):
        await rt.stop()


@pytest.fixture(scope="module")
async def channels(services: dict[str, ServiceRuntime]) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    opened = {name: grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") for name, rt in services.items()}
    yield opened
    for ch in opened.values():
        await ch.close(None)


@pytest.fixture(scope="module")
def stub(channels: dict[str, grpc.aio.Channel]) -> timeline_pb2_grpc.TimelineServiceStub:
    return timeline_pb2_grpc.TimelineServiceStub(channels["customer"])


@pytest.fixture(scope="module")
def contacts(channels: dict[str, grpc.aio.Channel]) -> customer_pb2_grpc.CustomerServiceStub:
    return customer_pb2_grpc.CustomerServiceStub(channels["customer"])


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = WAIT) -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached within {timeout}s; last value: {last!r}")


async def timeline_of(
    stub: timeline_pb2_grpc.TimelineServiceStub, md: Metadata, contact_id: str, **filters: Any
) -> list[pb.Interaction]:
    page = await stub.ListTimeline(pb.ListTimelineRequest(contact_id=contact_id, page_size=500, **filters), metadata=md)
    return list(page.items)


def tenant() -> str:
    return f"t-tle-{uuid.uuid4().hex[:10]}"


async def publish(rt: ServiceRuntime, tenant_id: str, type_: str, data: dict[str, Any], subject: str = "") -> Event:
    """A CloudEvent as another service's relay would publish it."""
    event = Event(
        id=uuid7(),
        source="crm." + type_.split(".")[1],
        type=type_,
        subject=subject or str(uuid.uuid4()),
        time=datetime.now(UTC),
        tenant_id=tenant_id,
        data=data,
    )
    assert rt.bus is not None
    headers = {MSG_ID_HEADER: event.id, "Content-Type": CONTENT_TYPE}
    await rt.bus.js.publish(event.nats_subject, event.to_json(), headers=headers, stream=DEFAULT_STREAM)
    return event


async def test_sales_and_servicedesk_events_become_read_only_entries(
    services: dict[str, ServiceRuntime],
    channels: dict[str, grpc.aio.Channel],
    stub: timeline_pb2_grpc.TimelineServiceStub,
    contacts: customer_pb2_grpc.CustomerServiceStub,
    token_issuer: TokenIssuer,
) -> None:
    md = token_issuer.metadata(tenant(), subject="0c0c")
    sales = sales_pb2_grpc.SalesServiceStub(channels["sales"])
    desk = servicedesk_pb2_grpc.ServicedeskServiceStub(channels["servicedesk"])
    contact = await contacts.CreateContact(
        cpb.CreateContactRequest(contact=cpb.Contact(first_name="芳", last_name="王")), metadata=md
    )
    opp = await sales.CreateOpportunity(
        sales_pb2.CreateOpportunityRequest(
            opportunity=sales_pb2.Opportunity(contact_id=contact.id, name="年度续约", amount="12500", currency="CNY")
        ),
        metadata=md,
    )
    for stage in ("proposal", "closed_won"):
        opp = await sales.UpdateOpportunity(
            sales_pb2.UpdateOpportunityRequest(
                opportunity=sales_pb2.Opportunity(id=opp.id, stage=stage),
                update_mask=field_mask_pb2.FieldMask(paths=["stage"]),
            ),
            metadata=md,
        )
    ticket = await desk.CreateTicket(
        servicedesk_pb2.CreateTicketRequest(
            ticket=servicedesk_pb2.Ticket(contact_id=contact.id, subject="发票抬头错误", priority="high")
        ),
        metadata=md,
    )
    for field, value in (("priority", "urgent"), ("status", "resolved")):  # only the status change is news
        ticket = await desk.UpdateTicket(
            servicedesk_pb2.UpdateTicketRequest(
                ticket=servicedesk_pb2.Ticket(id=ticket.id, **{field: value}),  # type: ignore[arg-type]
                update_mask=field_mask_pb2.FieldMask(paths=[field]),
            ),
            metadata=md,
        )

    async def all_there() -> list[pb.Interaction]:
        items = await timeline_of(stub, md, contact.id)
        return items if len(items) >= 6 else []

    items = await eventually(all_there)
    await asyncio.sleep(1.5)  # nothing more arrives (e.g. an entry for the opportunity's plain `updated`)
    items = await timeline_of(stub, md, contact.id)
    assert [(i.kind, i.details["action"]) for i in reversed(items)] == [
        ("opportunity", "created"),
        ("opportunity", "stage_changed"),
        ("opportunity", "stage_changed"),
        ("opportunity", "won"),
        ("ticket", "created"),
        ("ticket", "updated"),
    ]
    times = [(i.occurred_at.ToDatetime(), i.id) for i in items]
    assert times == sorted(times, reverse=True)
    created, first_move, _, won = list(reversed(items))[:4]
    assert created.subject == "Opportunity “年度续约” created (12500.00 CNY, stage qualification)"
    assert (created.source, created.reference_type, created.reference_id) == ("sales", "opportunity", opp.id)
    assert dict(created.details) == {
        "action": "created",
        "name": "年度续约",
        "amount": "12500.00",
        "currency": "CNY",
        "stage": "qualification",
        "status": "open",
    }
    assert (first_move.details["from_stage"], first_move.details["to_stage"]) == ("qualification", "proposal")
    assert won.subject == "Opportunity “年度续约” won (12500.00 CNY)" and won.details["status"] == "won"
    opened, resolved = items[1], items[0]
    assert opened.subject == "Ticket “发票抬头错误” opened (high priority)"
    assert resolved.subject == "Ticket “发票抬头错误” resolved" and resolved.source == "servicedesk"
    assert resolved.reference_id == ticket.id

    # Filters over learned kinds.
    assert {i.kind for i in await timeline_of(stub, md, contact.id, kind=["ticket"])} == {"ticket"}
    assert len(await timeline_of(stub, md, contact.id, kind=["opportunity", "call"])) == 4

    # Learned entries are read-only.
    for call in (
        stub.UpdateInteraction(
            pb.UpdateInteractionRequest(
                interaction=pb.Interaction(id=won.id, subject="edited"),
                update_mask=field_mask_pb2.FieldMask(paths=["subject"]),
            ),
            metadata=md,
        ),
        stub.DeleteInteraction(pb.DeleteInteractionRequest(id=won.id), metadata=md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # Another tenant: NOT_FOUND for the contact's timeline and for each entry.
    other = token_issuer.metadata(tenant())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await timeline_of(stub, other, contact.id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetInteraction(pb.GetInteractionRequest(id=won.id), metadata=other)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_future_producers_are_handled_generically(
    services: dict[str, ServiceRuntime],
    stub: timeline_pb2_grpc.TimelineServiceStub,
    contacts: customer_pb2_grpc.CustomerServiceStub,
    token_issuer: TokenIssuer,
) -> None:
    tid = tenant()
    md = token_issuer.metadata(tid)
    rt = services["customer"]
    contact = await contacts.CreateContact(cpb.CreateContactRequest(contact=cpb.Contact(last_name="赵")), metadata=md)
    cid = contact.id
    order = {"id": str(uuid.uuid4()), "contact_id": cid, "number": "SO-1001", "amount": "99.50", "currency": "CNY"}
    await publish(rt, tid, "crm.sales.order.created", {"order": {**order, "status": "placed"}})
    await publish(rt, tid, "crm.sales.order.updated", {"order": {**order, "status": "placed"}, "changed": ["amount"]})
    await publish(rt, tid, "crm.sales.order.updated", {"order": {**order, "status": "shipped"}, "changed": ["status"]})
    await publish(rt, tid, "crm.sales.order.deleted", {"order": order})
    complaint = {"id": str(uuid.uuid4()), "contact_id": cid, "subject": "送货太慢", "status": "open"}
    await publish(rt, tid, "crm.servicedesk.complaint.created", {"complaint": complaint})
    await publish(
        rt,
        tid,
        "crm.marketing.campaign_response.created",
        {
            "campaign_response": {
                "id": str(uuid.uuid4()),
                "contact_id": cid,
                "campaign_name": "春季促销",
                "response": "clicked",
            }
        },
    )
    await publish(
        rt,
        tid,
        "crm.marketing.survey.responded",
        {"survey": {"id": "s-1", "name": "NPS"}, "response": {"contact_id": cid, "response": "9"}},
    )
    await publish(rt, tid, "crm.sales.quote.sent", {"quote": {"id": "q-1", "contact_id": cid, "number": "Q-7"}})
    await publish(rt, tid, "crm.marketing.campaign.created", {"campaign": {"id": "c-1", "name": "no contact"}})

    async def all_there() -> list[pb.Interaction]:
        items = await timeline_of(stub, md, cid)
        return items if len(items) >= 6 else []

    items = list(reversed(await eventually(all_there)))
    await asyncio.sleep(1.5)
    items = list(reversed(await timeline_of(stub, md, cid)))
    assert [(i.kind, i.source, i.subject) for i in items] == [
        ("order", "sales", "Order “SO-1001” created"),
        ("order", "sales", "Order “SO-1001” is shipped"),
        ("complaint", "servicedesk", "Complaint “送货太慢” created"),
        ("campaign_response", "marketing", "Responded to campaign “春季促销”: clicked"),
        ("campaign_response", "marketing", "Responded to campaign “NPS”: 9"),
        ("quote", "sales", "Quote “Q-7” sent"),
    ]
    assert dict(items[0].details) == {
        "action": "created",
        "number": "SO-1001",
        "amount": "99.50",
        "currency": "CNY",
        "status": "placed",
    }
    assert items[4].reference_type == "survey"
    # A kind that exists only because a new producer sent it can be filtered on; a typo cannot.
    assert [i.kind for i in await timeline_of(stub, md, cid, kind=["quote"])] == ["quote"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await timeline_of(stub, md, cid, kind=["quotation"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_contacts_are_kept_and_never_leak(
    services: dict[str, ServiceRuntime],
    stub: timeline_pb2_grpc.TimelineServiceStub,
    contacts: customer_pb2_grpc.CustomerServiceStub,
    token_issuer: TokenIssuer,
) -> None:
    rt = services["customer"]
    tid_a, tid_b = tenant(), tenant()
    md_a = token_issuer.metadata(tid_a)
    contact_a = await contacts.CreateContact(
        cpb.CreateContactRequest(contact=cpb.Contact(last_name="A")), metadata=md_a
    )
    ghost = str(uuid.uuid4())
    # Tenant B's events name A's contact id and a contact nobody has (yet).
    forged = await publish(
        rt,
        tid_b,
        "crm.servicedesk.ticket.created",
        {"ticket": {"id": "t1", "contact_id": contact_a.id, "subject": "x"}},
    )
    await publish(
        rt, tid_b, "crm.servicedesk.ticket.created", {"ticket": {"id": "t2", "contact_id": ghost, "subject": "y"}}
    )
    marker = await publish(
        rt,
        tid_a,
        "crm.servicedesk.ticket.created",
        {"ticket": {"id": "t3", "contact_id": contact_a.id, "subject": "z"}},
    )

    async def stored(tid: str) -> int:
        with tenant_scope(tid):
            async with rt.db.transaction() as s:
                return int(await s.scalar(select(func.count()).select_from(Interaction)) or 0)

    await eventually(lambda: stored(tid_a))
    assert await eventually(lambda: stored(tid_b)) >= 1
    await eventually(lambda: _equals(stored(tid_b), 2))
    items = await timeline_of(stub, md_a, contact_a.id)
    assert [i.reference_id for i in items] == ["t3"]
    for contact_id in (contact_a.id, ghost):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await timeline_of(stub, token_issuer.metadata(tid_b), contact_id)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Replaying an event (a rebuild that bypasses the inbox) cannot add its entry twice.
    with tenant_scope(tid_a):
        async with rt.db.transaction() as s:
            await timeline.apply_event(s, marker)
    with tenant_scope(tid_b):
        async with rt.db.transaction() as s:
            await timeline.apply_event(s, forged)
    assert await stored(tid_a) == 1 and await stored(tid_b) == 2
    assert timeline.entry_id(tid_a, marker.id, marker.time) == items[0].id
    assert timeline.entry_id(tid_b, marker.id, marker.time) != items[0].id


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_a_late_event_for_a_merged_away_contact_lands_on_its_survivor_and_unmerge_takes_it_back(
    services: dict[str, ServiceRuntime],
    channels: dict[str, grpc.aio.Channel],
    stub: timeline_pb2_grpc.TimelineServiceStub,
    contacts: customer_pb2_grpc.CustomerServiceStub,
    token_issuer: TokenIssuer,
) -> None:
    tid = tenant()
    md = token_issuer.metadata(tid)
    rt = services["customer"]
    dedupe = dedupe_pb2_grpc.DedupeServiceStub(channels["customer"])

    async def new(name: str) -> str:
        made = await contacts.CreateContact(cpb.CreateContactRequest(contact=cpb.Contact(last_name=name)), metadata=md)
        return made.id

    duplicate, survivor, final = await new("周"), await new("周"), await new("周")
    first = await dedupe.MergeContacts(dpb.MergeContactsRequest(id=survivor, duplicate_id=duplicate), metadata=md)

    async def ticket_for(contact_id: str, subject: str) -> None:
        ticket = {"id": str(uuid.uuid4()), "contact_id": contact_id, "subject": subject, "status": "open"}
        await publish(rt, tid, "crm.servicedesk.ticket.created", {"ticket": ticket})

    # Sent by a service that had not yet learned of the merge: it names the merged-away contact.
    await ticket_for(duplicate, "发票抬头错误")

    async def on(contact_id: str, subject: str) -> list[pb.Interaction]:
        return [i for i in await timeline_of(stub, md, contact_id) if subject in i.subject]

    await eventually(lambda: on(survivor, "发票抬头错误"))
    # A merge of the survivor into another contact: the next late event follows both merges.
    second = await dedupe.MergeContacts(dpb.MergeContactsRequest(id=final, duplicate_id=survivor), metadata=md)
    await ticket_for(duplicate, "退款进度")
    await eventually(lambda: on(final, "退款进度"))
    assert {i.subject for i in await timeline_of(stub, md, final)} >= {"Ticket “发票抬头错误” opened"}
    # Undoing the merges (the later one first) gives the duplicate back both entries that were its own.
    await dedupe.UnmergeContacts(dpb.UnmergeContactsRequest(merge_id=second.id), metadata=md)
    await dedupe.UnmergeContacts(dpb.UnmergeContactsRequest(merge_id=first.id), metadata=md)
    back = sorted(i.subject for i in await timeline_of(stub, md, duplicate) if i.kind == "ticket")
    assert back == ["Ticket “发票抬头错误” opened", "Ticket “退款进度” opened"]
    assert not [i for i in await timeline_of(stub, md, final) if i.kind == "ticket"]
    assert not [i for i in await timeline_of(stub, md, survivor) if i.kind == "ticket"]
