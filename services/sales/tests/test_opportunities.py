"""The sales service over a real gRPC channel, beside the real customer service: opportunities (CRUD,
validation, versions, pagination, filters, tenant isolation), pipeline events, and contact names learned
from customer events."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from sqlalchemy import select

from crm.customer.v1 import customer_pb2 as cpb
from crm.customer.v1 import customer_pb2_grpc
from crm.sales.v1 import sales_pb2 as pb
from crm.sales.v1 import sales_pb2_grpc
from crm_kit.context import tenant_scope
from crm_kit.db.ids import uuid7
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.grpc import mask, outbox, violations
from crm_kit.testing.tokens import TokenIssuer
from crm_sales.models import ContactRef, Opportunity

Stub = sales_pb2_grpc.SalesServiceStub


async def create(stub: Stub, md: Any, **fields: Any) -> pb.Opportunity:
    fields.setdefault("name", "Deal")
    return await stub.CreateOpportunity(pb.CreateOpportunityRequest(opportunity=pb.Opportunity(**fields)), metadata=md)


async def test_crud_round_trip_with_chinese_text(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant, subject="u-alice")
    o = await create(stub, md, name="  华东区 年度框架协议 ", amount="12500.5", expected_close_date="2025-06-30")
    assert (o.name, o.amount, o.currency, o.stage, o.status) == (
        "华东区 年度框架协议",
        "12500.50",
        "CNY",
        "qualification",
        "open",
    )
    assert (o.owner_id, o.expected_close_date, o.version, o.contact_id, o.contact_name) == (
        "u-alice",
        "2025-06-30",
        1,
        "",
        "",
    )
    assert o.id and o.create_time.seconds > 0
    assert await stub.GetOpportunity(pb.GetOpportunityRequest(id=o.id), metadata=md) == o

    updated = await stub.UpdateOpportunity(
        pb.UpdateOpportunityRequest(
            opportunity=pb.Opportunity(id=o.id, name="华南区 续约", amount="999", version=1),
            update_mask=mask("name"),
        ),
        metadata=md,
    )
    assert (updated.name, updated.amount, updated.version) == ("华南区 续约", "12500.50", 2)
    assert updated.update_time.ToDatetime() >= o.update_time.ToDatetime()

    await stub.DeleteOpportunity(pb.DeleteOpportunityRequest(id=o.id, version=2), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetOpportunity(pb.GetOpportunityRequest(id=o.id), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_every_invalid_field_is_named(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(
            stub,
            md,
            name="  ",
            amount="-1",
            currency="yuan",
            stage="won_already",
            expected_close_date="2025-02-30",
            contact_id="not an id!",
            owner_id="o w n e r",
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {
        "name",
        "amount",
        "currency",
        "stage",
        "expected_close_date",
        "contact_id",
        "owner_id",
    }
    for amount in ("abc", "1e400", "1.23456"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await create(stub, md, amount=amount)
        assert set(violations(err.value)) == {"amount"}, amount

    o = await create(stub, md)
    for bad_mask, field in ((mask(), "update_mask"), (mask("status"), "update_mask"), (mask("stage"), "stage")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.UpdateOpportunity(
                pb.UpdateOpportunityRequest(opportunity=pb.Opportunity(id=o.id, stage="nope"), update_mask=bad_mask),
                metadata=md,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(violations(err.value)) == {field}


async def test_stale_versions_are_aborted(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    o = await create(stub, md)
    await stub.UpdateOpportunity(
        pb.UpdateOpportunityRequest(
            opportunity=pb.Opportunity(id=o.id, name="v2", version=1), update_mask=mask("name")
        ),
        metadata=md,
    )
    for call in (
        stub.UpdateOpportunity(
            pb.UpdateOpportunityRequest(
                opportunity=pb.Opportunity(id=o.id, name="late", version=1), update_mask=mask("name")
            ),
            metadata=md,
        ),
        stub.DeleteOpportunity(pb.DeleteOpportunityRequest(id=o.id, version=1), metadata=md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert "version" in violations(err.value)
    current = await stub.GetOpportunity(pb.GetOpportunityRequest(id=o.id), metadata=md)
    assert (current.name, current.version) == ("v2", 2)


async def test_page_size_bounds(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    for _ in range(3):
        await create(stub, md)
    assert len((await stub.ListOpportunities(pb.ListOpportunitiesRequest(page_size=0), metadata=md)).opportunities) == 3
    for bad in (-1, 501):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListOpportunities(pb.ListOpportunitiesRequest(page_size=bad), metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(violations(err.value)) == {"page_size"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListOpportunities(pb.ListOpportunitiesRequest(page_token="garbage"), metadata=md)
    assert set(violations(err.value)) == {"page_token"}


async def test_pagination_over_120_rows(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    created = [(await create(stub, md, name=f"机会 {i}")).id for i in range(120)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListOpportunities(pb.ListOpportunitiesRequest(page_size=50, page_token=token), metadata=md)
        seen.extend(o.id for o in page.opportunities)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == created  # ordered, no duplicates, no gaps
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a token is bound to its filters
        first = await stub.ListOpportunities(pb.ListOpportunitiesRequest(page_size=10), metadata=md)
        await stub.ListOpportunities(
            pb.ListOpportunitiesRequest(page_size=10, page_token=first.next_page_token, status="won"), metadata=md
        )
    assert set(violations(err.value)) == {"page_token"}


async def test_list_filters(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    alice = token_issuer.metadata(tenant, subject="u-alice")
    bob = token_issuer.metadata(tenant, subject="u-bob")
    a1 = await create(stub, alice, stage="proposal")
    a2 = await create(stub, alice, stage="closed_won")
    b1 = await create(stub, bob, stage="closed_lost")

    async def ids(**filters: Any) -> list[str]:
        page = await stub.ListOpportunities(pb.ListOpportunitiesRequest(**filters), metadata=alice)
        return [o.id for o in page.opportunities]

    assert await ids() == [a1.id, a2.id, b1.id]
    assert await ids(owner_id="u-alice") == [a1.id, a2.id]
    assert await ids(stage="proposal") == [a1.id]
    assert await ids(status="open") == [a1.id]
    assert await ids(status="won") == [a2.id]
    assert await ids(status="LOST", owner_id="u-bob") == [b1.id]
    assert await ids(contact_id=uuid7()) == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ids(status="pending", stage="nowhere")
    assert set(violations(err.value)) == {"status", "stage"}


async def test_pipeline(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    p = await stub.GetPipeline(pb.GetPipelineRequest(), metadata=token_issuer.metadata(tenant))
    assert [(s.key, s.probability, s.is_won, s.is_lost) for s in p.stages] == [
        ("qualification", 10, False, False),
        ("needs_analysis", 20, False, False),
        ("proposal", 50, False, False),
        ("negotiation", 75, False, False),
        ("closed_won", 100, True, False),
        ("closed_lost", 0, False, True),
    ]
    assert all(s.name for s in p.stages)


async def test_tenants_never_see_each_other(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    a, b = token_issuer.metadata(tenant), token_issuer.metadata(tenant + "b")
    o = await create(stub, a, name="Secret deal")
    await create(stub, b, name="B's own")
    for call in (
        stub.GetOpportunity(pb.GetOpportunityRequest(id=o.id), metadata=b),
        stub.UpdateOpportunity(
            pb.UpdateOpportunityRequest(opportunity=pb.Opportunity(id=o.id, name="Stolen"), update_mask=mask("name")),
            metadata=b,
        ),
        stub.DeleteOpportunity(pb.DeleteOpportunityRequest(id=o.id), metadata=b),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed_b = (await stub.ListOpportunities(pb.ListOpportunitiesRequest(page_size=500), metadata=b)).opportunities
    assert [x.name for x in listed_b] == ["B's own"]
    listed_a = (await stub.ListOpportunities(pb.ListOpportunitiesRequest(page_size=500), metadata=a)).opportunities
    assert [x.name for x in listed_a] == ["Secret deal"]
    assert (await stub.GetOpportunity(pb.GetOpportunityRequest(id=o.id), metadata=a)).version == 1


async def test_each_change_writes_its_event(
    stub: Stub, sales: ServiceRuntime, token_issuer: TokenIssuer, tenant: str
) -> None:
    md = token_issuer.metadata(tenant)
    o = await create(stub, md, name="Eventful")
    await stub.UpdateOpportunity(
        pb.UpdateOpportunityRequest(opportunity=pb.Opportunity(id=o.id, amount="10"), update_mask=mask("amount")),
        metadata=md,
    )
    await stub.UpdateOpportunity(  # no change: no version bump, no event
        pb.UpdateOpportunityRequest(opportunity=pb.Opportunity(id=o.id, amount="10.00"), update_mask=mask("amount")),
        metadata=md,
    )
    await stub.DeleteOpportunity(pb.DeleteOpportunityRequest(id=o.id), metadata=md)
    events = await outbox(sales.db, tenant)
    assert [e.type for e in events] == [
        "crm.sales.opportunity.created",
        "crm.sales.opportunity.updated",
        "crm.sales.opportunity.deleted",
    ]
    assert {e.subject for e in events} == {o.id}
    assert events[0].data["opportunity"]["name"] == "Eventful"
    assert events[1].data["changed"] == ["amount"]
    assert events[1].data["opportunity"]["amount"] == "10.00"


async def test_stage_changes_emit_stage_changed_won_and_lost(
    stub: Stub, sales: ServiceRuntime, token_issuer: TokenIssuer, tenant: str
) -> None:
    md = token_issuer.metadata(tenant)
    o = await create(stub, md)

    async def move(stage: str, version: int) -> pb.Opportunity:
        return await stub.UpdateOpportunity(
            pb.UpdateOpportunityRequest(
                opportunity=pb.Opportunity(id=o.id, stage=stage, version=version), update_mask=mask("stage")
            ),
            metadata=md,
        )

    assert (await move("negotiation", 1)).status == "open"
    won = await move("closed_won", 2)
    assert (won.stage, won.status, won.version) == ("closed_won", "won", 3)
    lost = await move("closed_lost", 3)
    assert (lost.status, lost.version) == ("lost", 4)

    events = await outbox(sales.db, tenant)
    assert [e.type.rsplit(".", 1)[1] for e in events] == [
        "created",
        "updated",
        "stage_changed",
        "updated",
        "stage_changed",
        "won",
        "updated",
        "stage_changed",
        "lost",
    ]
    changes = [(e.data["from_stage"], e.data["to_stage"]) for e in events if e.type.endswith("stage_changed")]
    assert changes == [
        ("qualification", "negotiation"),
        ("negotiation", "closed_won"),
        ("closed_won", "closed_lost"),
    ]
    assert sorted(events[3].data["changed"]) == ["stage", "status"]
    assert events[5].data["opportunity"]["status"] == "won"

    # Created straight into a won stage: created, then won.
    await create(stub, md, stage="closed_won")
    assert [e.type.rsplit(".", 1)[1] for e in (await outbox(sales.db, tenant))[-2:]] == ["created", "won"]


async def test_missing_contact_is_rejected(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, md, contact_id=uuid7())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {"contact_id"}

    o = await create(stub, md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateOpportunity(
            pb.UpdateOpportunityRequest(
                opportunity=pb.Opportunity(id=o.id, contact_id=uuid7()), update_mask=mask("contact_id")
            ),
            metadata=md,
        )
    assert set(violations(err.value)) == {"contact_id"}


async def test_contact_names_follow_the_customer_service(
    stub: Stub,
    customer_stub: customer_pb2_grpc.CustomerServiceStub,
    feed: Any,
    token_issuer: TokenIssuer,
    tenant: str,
) -> None:
    """End to end: a contact made in the customer service is accepted at once (verified over gRPC, or from
    the projection), renames reach the opportunity through events, deletes make the id unusable."""
    md = token_issuer.metadata(tenant)
    c = await customer_stub.CreateContact(
        cpb.CreateContactRequest(contact=cpb.Contact(first_name="伟", last_name="张")), metadata=md
    )
    o = await create(stub, md, contact_id=c.id)
    assert (o.contact_id, o.contact_name) == (c.id, "张伟")

    await customer_stub.UpdateContact(
        cpb.UpdateContactRequest(contact=cpb.Contact(id=c.id, first_name="伟强"), update_mask=mask("first_name")),
        metadata=md,
    )

    async def renamed() -> bool:
        current = await stub.GetOpportunity(pb.GetOpportunityRequest(id=o.id), metadata=md)
        return current.contact_name == "张伟强" and current.version == 1  # derived copy: no version bump

    await feed.eventually(renamed)
    assert (await stub.ListOpportunities(pb.ListOpportunitiesRequest(contact_id=c.id), metadata=md)).opportunities[
        0
    ].id == o.id

    await customer_stub.DeleteContact(cpb.DeleteContactRequest(id=c.id), metadata=md)

    async def refused() -> bool:
        # Until the deleted event arrives the projection still knows the contact (eventual consistency).
        try:
            await create(stub, md, contact_id=c.id)
        except grpc.aio.AioRpcError as err:
            assert set(violations(err)) == {"contact_id"}
            return True
        return False

    await feed.eventually(refused)
    # Editing other fields of an opportunity whose contact has gone still works.
    await stub.UpdateOpportunity(
        pb.UpdateOpportunityRequest(
            opportunity=pb.Opportunity(id=o.id, contact_id=c.id, name="Still here"),
            update_mask=mask("contact_id", "name"),
        ),
        metadata=md,
    )


async def test_contact_name_from_a_customer_event(
    stub: Stub, sales: ServiceRuntime, feed: Any, token_issuer: TokenIssuer, tenant: str
) -> None:
    """A contact the customer service does not know (it answers NOT_FOUND) but whose contact.created event
    arrived is taken from the projection; the projection is per tenant; stale events are ignored."""
    md = token_issuer.metadata(tenant)
    contact_id = uuid7()
    await feed.contact(tenant, "created", contact_id, "Mei", "李", version=1)

    async def projected() -> ContactRef | None:
        with tenant_scope(tenant):
            async with sales.db.transaction() as s:
                return (await s.execute(select(ContactRef).where(ContactRef.contact_id == contact_id))).scalar()

    await feed.eventually(projected)
    o = await create(stub, md, contact_id=contact_id)
    assert o.contact_name == "Mei 李"

    other = token_issuer.metadata(tenant + "b")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, other, contact_id=contact_id)
    assert set(violations(err.value)) == {"contact_id"}

    await feed.contact(tenant, "updated", contact_id, "Mei", "王", version=3)
    await feed.contact(tenant, "updated", contact_id, "Stale", "Name", version=2)  # arrives late: ignored
    sentinel = uuid7()
    await feed.contact(tenant, "created", sentinel, "X", "Y", version=1)  # processed after the stale one

    async def sentinel_seen() -> bool:
        with tenant_scope(tenant):
            async with sales.db.transaction() as s:
                return (await s.get(ContactRef, (tenant, sentinel))) is not None

    await feed.eventually(sentinel_seen)
    current = await stub.GetOpportunity(pb.GetOpportunityRequest(id=o.id), metadata=md)
    assert current.contact_name == "Mei 王"
    ref = await projected()
    assert ref is not None and (ref.display_name, ref.contact_version, ref.deleted) == ("Mei 王", 3, False)

    # A rename in one tenant never touches another tenant's rows, even with the same contact id.
    with tenant_scope(tenant + "b"):
        async with sales.db.transaction() as s:
            s.add(Opportunity(name="b", currency="CNY", stage="proposal", status="open", contact_id=contact_id))
    await feed.contact(tenant, "updated", contact_id, "Mei", "赵", version=4)
    await feed.eventually(
        lambda: _contact_name(stub, md, o.id, "Mei 赵"),
    )
    with tenant_scope(tenant + "b"):
        async with sales.db.transaction() as s:
            names = (await s.scalars(select(Opportunity.contact_name))).all()
    assert names == [""]


async def _contact_name(stub: Stub, md: Any, opportunity_id: str, expected: str) -> bool:
    current = await stub.GetOpportunity(pb.GetOpportunityRequest(id=opportunity_id), metadata=md)
    return current.contact_name == expected
