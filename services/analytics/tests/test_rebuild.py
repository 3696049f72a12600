"""The real customer service producing events through its outbox, the analytics read model following them,
and a rebuild from the stream giving the same summaries (this module has a nats-server of its own)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy.exc import DBAPIError

from crm.customer.v1 import customer_pb2 as cpb
from crm.customer.v1 import customer_pb2_grpc
from crm.sales.v1 import sales_pb2 as spb
from crm.servicedesk.v1 import servicedesk_pb2 as tpb
from crm_analytics.rebuild import IncompleteStream, clear, rebuild
from crm_customer.app import SPEC as CUSTOMER
from crm_kit.db import Database
from crm_kit.db.ids import uuid7
from crm_kit.events.bus import EventBus
from crm_kit.events.stream import DEFAULT_STREAM
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer

if TYPE_CHECKING:
    from conftest import Analytics, Publisher, Summaries

A = f"a{uuid.uuid4().hex[:12]}"
B = f"b{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
async def customer(
    database_factory: DatabaseFactory, events_nats: str, token_issuer: TokenIssuer
) -> AsyncIterator[customer_pb2_grpc.CustomerServiceStub]:
    rt: ServiceRuntime = await start_service(
        CUSTOMER, database_factory.create("customer"), nats_url=events_nats, verifier=token_issuer.verifier()
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") as channel:
        yield customer_pb2_grpc.CustomerServiceStub(channel)
    await rt.stop()


@pytest.fixture
async def owner_db(analytics: Analytics) -> AsyncIterator[Database]:
    """The analytics database as its owner, which is what a rebuild runs with."""
    db = Database(analytics.urls.owner)
    yield db
    await db.dispose()


@pytest.fixture
async def bus(events_nats: str) -> AsyncIterator[EventBus]:
    bus = await EventBus.connect(events_nats, name="analytics-test-rebuild", timeout=10)
    yield bus
    await bus.close()


async def test_the_read_model_follows_the_customer_service(
    customer: customer_pb2_grpc.CustomerServiceStub,
    publisher: Publisher,
    summaries: Summaries,
    token_issuer: TokenIssuer,
) -> None:
    md_a, md_b = token_issuer.metadata(A), token_issuer.metadata(B)
    contacts = [
        await customer.CreateContact(cpb.CreateContactRequest(contact=cpb.Contact(first_name=n)), metadata=md_a)
        for n in ("Li", "Wang", "Zhang")
    ]
    await customer.CreateAccount(cpb.CreateAccountRequest(account=cpb.Account(name="Acme")), metadata=md_a)
    await customer.CreateContact(cpb.CreateContactRequest(contact=cpb.Contact(first_name="Zhao")), metadata=md_b)
    updated = await customer.UpdateContact(
        cpb.UpdateContactRequest(
            contact=cpb.Contact(id=contacts[0].id, last_name="Lei", version=1),
            update_mask=field_mask_pb2.FieldMask(paths=["last_name"]),
        ),
        metadata=md_a,
    )
    await customer.DeleteContact(cpb.DeleteContactRequest(id=updated.id, version=updated.version), metadata=md_a)

    # Other contexts' events, published directly, some out of order and one twice.
    p = publisher
    opp = uuid7()
    late = p.event(
        A,
        "crm.sales.opportunity.created",
        spb.Opportunity(id=opp, stage="qualify", amount="10.00", currency="EUR", status="open", version=1),
    )
    await p.publish(
        p.event(
            A,
            "crm.sales.opportunity.updated",
            spb.Opportunity(id=opp, stage="proposal", amount="1234.56", currency="EUR", status="open", version=2),
        ),
        late,
        p.event(A, "crm.servicedesk.ticket.created", tpb.Ticket(id=uuid7(), priority="low", status="new", version=1)),
        p.event(B, "crm.gateway.tenant.created", {"id": B, "version": 1}),
    )
    await p.publish(late, msg_id=f"{late.id}-redelivered")

    a = await summaries.after(A, 9)  # 3 + 1 + 1 + 1 customer events, 3 published
    b = await summaries.after(B, 2)
    assert (a.contact_count, a.account_count, a.open_opportunity_count, a.events_processed) == (2, 1, 1, 9)
    assert [(x.key, x.currency, x.count, x.amount) for x in a.pipeline_by_stage] == [("proposal", "EUR", 1, "1234.56")]
    assert [(x.key, x.count) for x in a.open_tickets_by_priority] == [("low", 1)]
    assert (b.contact_count, b.account_count, b.events_processed) == (1, 0, 2)


async def test_rebuild_from_the_stream_gives_the_same_summaries(
    owner_db: Database, bus: EventBus, publisher: Publisher, summaries: Summaries
) -> None:
    before = {t: await summaries.get(t) for t in (A, B)}
    assert before[A].events_processed == 9

    await clear(owner_db)
    assert (await summaries.get(A)).events_processed == 0

    result = await rebuild(owner_db, bus, DEFAULT_STREAM)
    # 7 events from the customer service, 4 published and 1 redelivered under another message id.
    assert (result.applied, result.duplicates, result.failed) == (11, 1, 0)
    after = {t: await summaries.get(t) for t in (A, B)}
    assert after == before

    # The live consumer carries on from where it was, and does not fold again what the replay folded.
    await publisher.publish(publisher.event(A, "crm.customer.account.created", cpb.Account(id=uuid7(), version=1)))
    s = await summaries.after(A, 10)
    assert (s.account_count, s.events_processed) == (2, 10)

    # A second rebuild is the same again.
    expected = {t: await summaries.get(t) for t in (A, B)}
    await rebuild(owner_db, bus, DEFAULT_STREAM)
    assert {t: await summaries.get(t) for t in (A, B)} == expected


async def test_rebuild_refuses_a_stream_that_lost_its_first_events(
    owner_db: Database, bus: EventBus, summaries: Summaries
) -> None:
    state = (await bus.js.stream_info(DEFAULT_STREAM)).state
    await bus.js.purge_stream(DEFAULT_STREAM, keep=2)
    with pytest.raises(IncompleteStream):
        await rebuild(owner_db, bus, DEFAULT_STREAM)
    assert (await summaries.get(A)).events_processed == 10  # refused before touching anything

    result = await rebuild(owner_db, bus, DEFAULT_STREAM, allow_incomplete=True)
    assert (result.applied, result.last_sequence) == (2, state.last_seq)


async def test_rebuild_empties_the_tables_as_their_owner(analytics: Analytics, owner_db: Database) -> None:
    """On PostgreSQL the application role may not TRUNCATE: the rebuild fails loudly with it, instead of
    deleting nothing through row-level security and folding everything twice."""
    if owner_db.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    app_db = Database(analytics.urls.app)
    try:
        with pytest.raises(DBAPIError, match="permission denied"):
            await clear(app_db)
    finally:
        await app_db.dispose()
