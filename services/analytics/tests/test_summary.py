"""The analytics service end to end: real CloudEvents on JetStream, the durable `analytics` consumer folding
them, and GetSummary over a real gRPC channel."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

import grpc
import pytest

from crm.analytics.v1 import analytics_pb2 as apb
from crm.common.v1.common_pb2 import CountBucket
from crm.customer.v1 import customer_pb2 as cpb
from crm.marketing.v1 import marketing_pb2 as mpb
from crm.sales.v1 import sales_pb2 as spb
from crm.servicedesk.v1 import servicedesk_pb2 as tpb
from crm_kit.db.ids import uuid7

if TYPE_CHECKING:
    from conftest import Publisher, Summaries


def tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def opportunity(
    id_: str, version: int, stage: str, amount: str, currency: str, status: str = "open"
) -> spb.Opportunity:
    return spb.Opportunity(
        id=id_, name="deal", stage=stage, amount=amount, currency=currency, status=status, version=version
    )


def pipeline(summary: apb.Summary) -> list[tuple[str, str, int, str]]:
    return [(b.key, b.currency, b.count, b.amount) for b in summary.pipeline_by_stage]


def counts(buckets: Iterable[CountBucket]) -> list[tuple[str, int]]:
    return [(b.key, b.count) for b in buckets]


async def test_summary_counts_and_sums_per_tenant(publisher: Publisher, summaries: Summaries) -> None:
    a, b = tenant(), tenant()
    p = publisher
    opp = [uuid7() for _ in range(5)]
    events = [
        p.event(a, "crm.customer.contact.created", cpb.Contact(id=uuid7(), first_name="Li", version=1)),
        p.event(a, "crm.customer.contact.created", cpb.Contact(id=uuid7(), first_name="Wang", version=1)),
        p.event(a, "crm.customer.account.created", cpb.Account(id=uuid7(), name="Acme", version=1)),
        p.event(a, "crm.sales.opportunity.created", opportunity(opp[0], 1, "qualify", "1000.00", "USD")),
        p.event(a, "crm.sales.opportunity.created", opportunity(opp[1], 1, "qualify", "500.00", "USD")),
        p.event(a, "crm.sales.opportunity.created", opportunity(opp[2], 1, "qualify", "0.10", "CNY")),
        p.event(a, "crm.sales.opportunity.created", opportunity(opp[3], 1, "proposal", "12500.55", "CNY")),
        p.event(a, "crm.sales.opportunity.won", opportunity(opp[4], 3, "closed_won", "99.00", "USD", "won")),
        p.event(a, "crm.servicedesk.ticket.created", tpb.Ticket(id=uuid7(), priority="high", status="new", version=1)),
        p.event(a, "crm.servicedesk.ticket.created", tpb.Ticket(id=uuid7(), priority="high", status="open", version=1)),
        p.event(
            a, "crm.servicedesk.ticket.created", tpb.Ticket(id=uuid7(), priority="low", status="pending", version=2)
        ),
        p.event(
            a, "crm.servicedesk.ticket.updated", tpb.Ticket(id=uuid7(), priority="urgent", status="resolved", version=2)
        ),
        p.event(
            a, "crm.servicedesk.ticket.updated", tpb.Ticket(id=uuid7(), priority="low", status="closed", version=4)
        ),
        p.event(a, "crm.marketing.campaign.created", mpb.Campaign(id=uuid7(), status="draft", version=1)),
        p.event(a, "crm.marketing.campaign.created", mpb.Campaign(id=uuid7(), status="draft", version=1)),
        p.event(a, "crm.marketing.campaign.created", mpb.Campaign(id=uuid7(), status="active", version=1)),
        # Not tracked by the read model: counted, nothing else.
        p.event(a, "crm.gateway.user.created", {"id": "u1", "version": 1}),
        p.event(b, "crm.customer.contact.created", cpb.Contact(id=uuid7(), first_name="Zhao", version=1)),
    ]
    newest = events[0].time + timedelta(hours=1)
    # Events need not arrive in time order: as_of is the newest time folded.
    events.insert(
        3, p.event(a, "crm.customer.account.created", cpb.Account(id=uuid7(), name="Globex", version=1), time=newest)
    )
    await p.publish(*events)

    s = await summaries.after(a, len(events) - 1)
    assert (s.contact_count, s.account_count, s.open_opportunity_count) == (2, 2, 4)
    assert pipeline(s) == [
        ("proposal", "CNY", 1, "12500.55"),
        ("qualify", "CNY", 1, "0.10"),
        ("qualify", "USD", 2, "1500.00"),
    ]
    assert counts(s.open_tickets_by_priority) == [("high", 2), ("low", 1)]
    assert counts(s.campaigns_by_status) == [("active", 1), ("draft", 2)]
    assert s.events_processed == len(events) - 1
    assert s.as_of.ToDatetime().replace(tzinfo=newest.tzinfo) == newest

    other = await summaries.after(b, 1)
    assert (other.contact_count, other.account_count, other.open_opportunity_count, other.events_processed) == (
        1,
        0,
        0,
        1,
    )
    assert not other.pipeline_by_stage and not other.open_tickets_by_priority and not other.campaigns_by_status

    empty = await summaries.get(tenant())
    assert empty == type(empty)()  # no events: zeros, no as_of


async def test_duplicates_do_not_double_count(publisher: Publisher, summaries: Summaries) -> None:
    t = tenant()
    p = publisher
    created = p.event(t, "crm.sales.opportunity.created", opportunity(uuid7(), 1, "qualify", "100.00", "USD"))
    await p.publish(created)
    await summaries.after(t, 1)

    # The same event again under another message id gets past JetStream's deduplication: the inbox skips it.
    await p.publish(created, msg_id=f"{created.id}-again")
    # The same message id again is dropped by JetStream itself.
    await p.publish(created)
    # The same change, re-emitted as a new event (new id, same version): counted, but not applied twice.
    twin = p.event(t, "crm.sales.opportunity.created", opportunity(created.subject, 1, "qualify", "100.00", "USD"))
    marker = p.event(t, "crm.test.marker.created", {"id": "m", "version": 1})
    await p.publish(twin, marker)

    s = await summaries.after(t, 3)
    assert s.events_processed == 3  # created, twin, marker: the redeliveries were not folded
    assert s.open_opportunity_count == 1
    assert pipeline(s) == [("qualify", "USD", 1, "100.00")]


async def test_an_older_version_arriving_later_is_ignored(publisher: Publisher, summaries: Summaries) -> None:
    t = tenant()
    p = publisher
    id_ = uuid7()
    v1 = p.event(t, "crm.sales.opportunity.created", opportunity(id_, 1, "qualify", "100.00", "USD"))
    v2 = p.event(
        t, "crm.sales.opportunity.updated", opportunity(id_, 2, "proposal", "250.50", "USD"), changed=["stage"]
    )
    v3 = p.event(t, "crm.sales.opportunity.stage_changed", opportunity(id_, 3, "negotiation", "250.50", "USD"))
    v3_updated = p.event(t, "crm.sales.opportunity.updated", opportunity(id_, 3, "negotiation", "250.50", "USD"))
    await p.publish(v3, v1, v3_updated, v2)

    s = await summaries.after(t, 4)
    assert pipeline(s) == [("negotiation", "USD", 1, "250.50")]

    won = p.event(t, "crm.sales.opportunity.won", opportunity(id_, 4, "closed_won", "250.50", "USD", "won"))
    await p.publish(won)
    s = await summaries.after(t, 5)
    assert (s.open_opportunity_count, list(s.pipeline_by_stage)) == (0, [])


async def test_a_deletion_lowers_counts_and_stays_deleted(publisher: Publisher, summaries: Summaries) -> None:
    t = tenant()
    p = publisher
    keep, gone, early = (cpb.Contact(id=uuid7(), first_name=n, version=1) for n in ("Keep", "Gone", "Early"))
    ticket = tpb.Ticket(id=uuid7(), priority="high", status="open", version=2)
    await p.publish(
        p.event(t, "crm.customer.contact.created", keep),
        p.event(t, "crm.customer.contact.created", gone),
        p.event(t, "crm.servicedesk.ticket.updated", ticket),
    )
    s = await summaries.after(t, 3)
    assert (s.contact_count, counts(s.open_tickets_by_priority)) == (2, [("high", 1)])

    await p.publish(
        p.event(t, "crm.customer.contact.deleted", gone),  # a deletion carries the version it deleted
        p.event(t, "crm.servicedesk.ticket.deleted", ticket),
        # A deletion that overtook its creation: the late creation must not bring it back.
        p.event(t, "crm.customer.contact.deleted", early),
        p.event(t, "crm.customer.contact.created", early),
        # A redelivered older change of a deleted resource stays ignored too.
        p.event(t, "crm.customer.contact.updated", gone),
    )
    s = await summaries.after(t, 8)
    assert (s.contact_count, list(s.open_tickets_by_priority), s.events_processed) == (1, [], 8)


async def test_summary_needs_a_token(summaries: Summaries) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await summaries.stub.GetSummary(apb.GetSummaryRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_malformed_event_is_not_folded_and_blocks_nothing(publisher: Publisher, summaries: Summaries) -> None:
    t = tenant()
    p = publisher
    bad = p.event(t, "crm.sales.opportunity.created", opportunity(uuid7(), 1, "qualify", "a lot", "USD"))
    good = p.event(t, "crm.sales.opportunity.created", opportunity(uuid7(), 1, "qualify", "5.00", "USD"))
    await p.publish(bad, good)
    s = await summaries.after(t, 1)
    # The bad one is retried with a backoff and finally kept as a dead letter, never counted.
    assert (s.events_processed, pipeline(s)) == (1, [("qualify", "USD", 1, "5.00")])
