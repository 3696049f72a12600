"""The interaction timeline over a real gRPC channel: recorded interactions (round trip, validation naming
every field, edits with masks and versions), the timeline's filters and newest-first keyset pagination,
tenant isolation and the owner rule, and the merge helpers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2
from sqlalchemy import select

from crm.customer.v1 import customer_pb2 as cpb
from crm.customer.v1 import customer_pb2_grpc, timeline_pb2_grpc
from crm.customer.v1 import timeline_pb2 as pb
from crm_customer import timeline
from crm_customer.app import SPEC
from crm_kit import pagination
from crm_kit.context import system_scope, tenant_scope
from crm_kit.db.system_tables import OutboxMessage
from crm_kit.errors import InvalidArgument
from crm_kit.events.envelope import Event
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.grpc import violations
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer

Metadata = tuple[tuple[str, str], ...]


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
async def channel(customer: ServiceRuntime) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{customer.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def contacts(channel: grpc.aio.Channel) -> customer_pb2_grpc.CustomerServiceStub:
    return customer_pb2_grpc.CustomerServiceStub(channel)


@pytest.fixture(scope="module")
def stub(channel: grpc.aio.Channel) -> timeline_pb2_grpc.TimelineServiceStub:
    return timeline_pb2_grpc.TimelineServiceStub(channel)


def tenant() -> str:
    return f"t-tl-{uuid.uuid4().hex[:10]}"


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


async def new_contact(
    contacts: customer_pb2_grpc.CustomerServiceStub, md: Metadata, name: str = "王芳", owner_id: str = ""
) -> cpb.Contact:
    return await contacts.CreateContact(
        cpb.CreateContactRequest(contact=cpb.Contact(last_name=name, owner_id=owner_id)), metadata=md
    )


async def whole_timeline(
    stub: timeline_pb2_grpc.TimelineServiceStub, md: Metadata, contact_id: str, page_size: int = 500, **filters: str
) -> list[pb.Interaction]:
    items: list[pb.Interaction] = []
    token = ""
    while True:
        page = await stub.ListTimeline(
            pb.ListTimelineRequest(contact_id=contact_id, page_size=page_size, page_token=token, **filters),  # type: ignore[arg-type]
            metadata=md,
        )
        items.extend(page.items)
        token = page.next_page_token
        if not token:
            return items


async def test_recorded_interaction_round_trip(
    stub: timeline_pb2_grpc.TimelineServiceStub,
    contacts: customer_pb2_grpc.CustomerServiceStub,
    customer: ServiceRuntime,
    token_issuer: TokenIssuer,
) -> None:
    tid = tenant()
    md = token_issuer.metadata(tid, subject="0a0b0c0d")
    contact = await new_contact(contacts, md)
    when = datetime(2025, 3, 14, 9, 30, 15, 123456, tzinfo=UTC)
    details = struct_pb2.Struct()
    details.update({"topic": "续约", "attendees": 2})
    created = await stub.CreateInteraction(
        pb.CreateInteractionRequest(
            contact_id=contact.id,
            interaction=pb.Interaction(
                kind=" Call ",
                occurred_at=ts(when),
                subject="  讨论 2025 年度 续约  ",
                body="客户希望在四月前签约。\n需要报价单。",
                direction="Inbound",
                duration_seconds=420,
                details=details,
                source="forged",
                id="forged",
            ),
        ),
        metadata=md,
    )
    assert created.id != "forged" and created.version == 1 and created.contact_id == contact.id
    assert (created.kind, created.direction, created.duration_seconds) == ("call", "inbound", 420)
    assert created.subject == "讨论 2025 年度 续约"
    assert created.body == "客户希望在四月前签约。\n需要报价单。"
    assert created.occurred_at.ToDatetime(tzinfo=UTC) == when
    assert (created.source, created.owner_id) == ("customer", "0a0b0c0d")
    assert dict(created.details) == {"topic": "续约", "attendees": 2.0}

    got = await stub.GetInteraction(pb.GetInteractionRequest(id=created.id), metadata=md)
    assert got == created
    listed = await whole_timeline(stub, md, contact.id)
    assert [i.id for i in listed] == [created.id]

    # Edit with a mask; the version moves; a stale version is ABORTED naming `version`.
    updated = await stub.UpdateInteraction(
        pb.UpdateInteractionRequest(
            interaction=pb.Interaction(id=created.id, subject="已报价", body="ignored", version=1),
            update_mask=field_mask_pb2.FieldMask(paths=["subject"]),
        ),
        metadata=md,
    )
    assert (updated.subject, updated.body, updated.version) == ("已报价", created.body, 2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateInteraction(
            pb.UpdateInteractionRequest(
                interaction=pb.Interaction(id=created.id, subject="late", version=1),
                update_mask=field_mask_pb2.FieldMask(paths=["subject"]),
            ),
            metadata=md,
        )
    assert err.value.code() == grpc.StatusCode.ABORTED and "version" in violations(err.value)
    # The change is validated as a whole: a call turned into a note keeps its direction -> named.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateInteraction(
            pb.UpdateInteractionRequest(
                interaction=pb.Interaction(id=created.id, kind="note"),
                update_mask=field_mask_pb2.FieldMask(paths=["kind"]),
            ),
            metadata=md,
        )
    assert {"direction", "duration_seconds"} <= set(violations(err.value))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateInteraction(
            pb.UpdateInteractionRequest(
                interaction=pb.Interaction(id=created.id, contact_id="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["contact_id"]),
            ),
            metadata=md,
        )
    assert "update_mask" in violations(err.value)

    await stub.DeleteInteraction(pb.DeleteInteractionRequest(id=created.id, version=2), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetInteraction(pb.GetInteractionRequest(id=created.id), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await whole_timeline(stub, md, contact.id) == []

    with system_scope():
        async with customer.db.transaction() as s:
            rows = (
                await s.scalars(select(OutboxMessage).where(OutboxMessage.tenant_id == tid).order_by(OutboxMessage.id))
            ).all()
    events = [Event.from_json(r.payload) for r in rows if ".interaction." in r.type]
    assert [e.type for e in events] == [
        "crm.customer.interaction.created",
        "crm.customer.interaction.updated",
        "crm.customer.interaction.deleted",
    ]
    assert events[0].data["interaction"]["subject"] == "讨论 2025 年度 续约"
    assert events[0].data["interaction"]["contact_id"] == contact.id


async def test_validation_names_every_field(
    stub: timeline_pb2_grpc.TimelineServiceStub,
    contacts: customer_pb2_grpc.CustomerServiceStub,
    token_issuer: TokenIssuer,
) -> None:
    md = token_issuer.metadata(tenant())
    contact = await new_contact(contacts, md)
    big = struct_pb2.Struct()
    big.update({"blob": "x" * 5000})

    async def problems(interaction: pb.Interaction, contact_id: str = contact.id) -> dict[str, str]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateInteraction(
                pb.CreateInteractionRequest(contact_id=contact_id, interaction=interaction), metadata=md
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return violations(err.value)

    assert set(await problems(pb.Interaction(kind="fax"))) == {"kind"}
    assert "other kinds come from events" in (await problems(pb.Interaction(kind="ticket")))["kind"]
    assert set(await problems(pb.Interaction(kind="call"))) == {"direction"}
    assert set(await problems(pb.Interaction(kind="email", direction="sideways"))) == {"direction"}
    found = await problems(pb.Interaction(kind="note", direction="inbound", duration_seconds=60))
    assert set(found) == {"direction", "duration_seconds", "body"}
    found = await problems(
        pb.Interaction(
            kind="meeting",
            subject="长" * 256,
            body="b" * 10_001,
            duration_seconds=86_401,
            occurred_at=ts(datetime.now(UTC) + timedelta(days=2)),
            reference_type="opportunity",
            owner_id="not an id!",
            details=big,
        )
    )
    assert set(found) == {
        "subject",
        "body",
        "duration_seconds",
        "occurred_at",
        "reference_id",
        "owner_id",
        "details",
    }
    found = await problems(pb.Interaction(kind="call", direction="outbound", duration_seconds=-1))
    assert set(found) == {"duration_seconds"}
    old = await problems(pb.Interaction(kind="note", body="x", occurred_at=ts(datetime(1850, 1, 1, tzinfo=UTC))))
    assert set(old) == {"occurred_at"}
    assert set(await problems(pb.Interaction(kind="note", body="x"), contact_id="")) == {"contact_id"}
    assert "contact_id" in await problems(
        pb.Interaction(kind="note", body="x", contact_id=str(uuid.uuid4())), contact_id=contact.id
    )
    # A contact this tenant does not have is NOT_FOUND.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateInteraction(
            pb.CreateInteractionRequest(
                contact_id=str(uuid.uuid4()), interaction=pb.Interaction(kind="note", body="hello")
            ),
            metadata=md,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The contact may also come inside the interaction; occurred_at defaults to now.
    note = await stub.CreateInteraction(
        pb.CreateInteractionRequest(interaction=pb.Interaction(kind="note", body="备注", contact_id=contact.id)),
        metadata=md,
    )
    age = datetime.now(UTC) - note.occurred_at.ToDatetime(tzinfo=UTC)
    assert note.contact_id == contact.id and timedelta(0) <= age < timedelta(minutes=1)


async def test_filters_and_newest_first_pagination(
    stub: timeline_pb2_grpc.TimelineServiceStub,
    contacts: customer_pb2_grpc.CustomerServiceStub,
    token_issuer: TokenIssuer,
) -> None:
    md = token_issuer.metadata(tenant())
    contact = await new_contact(contacts, md)
    base = datetime(2025, 1, 1, 8, 0, tzinfo=UTC)
    kinds = ["call", "email", "meeting", "note"]
    made: list[pb.Interaction] = []
    for i in range(40):
        kind = kinds[i % 4]
        # Every 5 entries share one instant: the id breaks the tie.
        when = base + timedelta(hours=i // 5)
        made.append(
            await stub.CreateInteraction(
                pb.CreateInteractionRequest(
                    contact_id=contact.id,
                    interaction=pb.Interaction(
                        kind=kind,
                        occurred_at=ts(when),
                        subject=f"第{i}次",
                        body="正文" if kind == "note" else "",
                        direction="outbound" if kind in ("call", "email") else "",
                    ),
                ),
                metadata=md,
            )
        )

    def key(i: pb.Interaction) -> tuple[datetime, str]:
        return (i.occurred_at.ToDatetime(tzinfo=UTC), i.id)

    expected = sorted(made, key=key, reverse=True)
    pages: list[list[pb.Interaction]] = []
    token = ""
    while True:
        page = await stub.ListTimeline(
            pb.ListTimelineRequest(contact_id=contact.id, page_size=7, page_token=token), metadata=md
        )
        pages.append(list(page.items))
        token = page.next_page_token
        if not token:
            break
        if len(pages) == 2:  # a newer entry arriving between pages neither shifts nor repeats the rest
            await stub.CreateInteraction(
                pb.CreateInteractionRequest(contact_id=contact.id, interaction=pb.Interaction(kind="note", body="新")),
                metadata=md,
            )
    seen = [i.id for p in pages for i in p]
    assert [len(p) for p in pages] == [7, 7, 7, 7, 7, 5]
    assert seen == [i.id for i in expected]

    calls = await whole_timeline(stub, md, contact.id, kind=["call"])  # type: ignore[arg-type]
    assert len(calls) == 10 and {i.kind for i in calls} == {"call"}
    two = await whole_timeline(stub, md, contact.id, page_size=3, kind=["Meeting", "email", "email"])  # type: ignore[arg-type]
    assert len(two) == 20 and {i.kind for i in two} == {"meeting", "email"}
    window = await whole_timeline(stub, md, contact.id, since="2025-01-01T10:00:00Z", until="2025-01-01T20:00:00+08:00")
    # since is inclusive, until exclusive: hours 10, 11 UTC -> entries 10..19
    assert sorted(i.subject for i in window) == sorted(f"第{n}次" for n in range(10, 20))
    day = await whole_timeline(stub, md, contact.id, since="2025-01-01", until="2025-01-02", kind=["note"])  # type: ignore[arg-type]
    assert len(day) == 10

    async def bad(**fields: object) -> dict[str, str]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListTimeline(pb.ListTimelineRequest(**fields), metadata=md)  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return violations(err.value)

    assert set(await bad(contact_id=contact.id, kind=["fax"])) == {"kind"}
    assert set(await bad(contact_id=contact.id, kind=["call!"])) == {"kind"}
    assert set(await bad(contact_id=contact.id, since="yesterday", until="2025-13-01")) == {"since", "until"}
    assert set(await bad(contact_id=contact.id, since="2025-01-01T10:00:00")) == {"since"}
    assert set(await bad(contact_id=contact.id, since="2025-02-01", until="2025-01-01")) == {"until"}
    assert set(await bad(contact_id=contact.id, page_size=501)) == {"page_size"}
    assert set(await bad(contact_id=contact.id, page_token="garbage")) == {"page_token"}
    first = await stub.ListTimeline(pb.ListTimelineRequest(contact_id=contact.id, page_size=2), metadata=md)
    assert set(await bad(contact_id=contact.id, kind=["call"], page_token=first.next_page_token)) == {"page_token"}
    assert set(await bad(contact_id="")) == {"contact_id"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListTimeline(pb.ListTimelineRequest(contact_id=str(uuid.uuid4())), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_tenants_never_see_each_others_timelines(
    stub: timeline_pb2_grpc.TimelineServiceStub,
    contacts: customer_pb2_grpc.CustomerServiceStub,
    token_issuer: TokenIssuer,
) -> None:
    a, b = token_issuer.metadata(tenant()), token_issuer.metadata(tenant())
    contact_a = await new_contact(contacts, a, "甲")
    contact_b = await new_contact(contacts, b, "乙")
    entry = await stub.CreateInteraction(
        pb.CreateInteractionRequest(contact_id=contact_a.id, interaction=pb.Interaction(kind="note", body="机密")),
        metadata=a,
    )
    calls = [
        stub.ListTimeline(pb.ListTimelineRequest(contact_id=contact_a.id), metadata=b),
        stub.GetInteraction(pb.GetInteractionRequest(id=entry.id), metadata=b),
        stub.UpdateInteraction(
            pb.UpdateInteractionRequest(
                interaction=pb.Interaction(id=entry.id, body="hijack"),
                update_mask=field_mask_pb2.FieldMask(paths=["body"]),
            ),
            metadata=b,
        ),
        stub.DeleteInteraction(pb.DeleteInteractionRequest(id=entry.id), metadata=b),
        stub.CreateInteraction(
            pb.CreateInteractionRequest(contact_id=contact_a.id, interaction=pb.Interaction(kind="note", body="x")),
            metadata=b,
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await whole_timeline(stub, b, contact_b.id) == []
    assert [i.body for i in await whole_timeline(stub, a, contact_a.id)] == ["机密"]


async def test_members_see_the_timelines_of_their_own_contacts(
    stub: timeline_pb2_grpc.TimelineServiceStub,
    contacts: customer_pb2_grpc.CustomerServiceStub,
    token_issuer: TokenIssuer,
) -> None:
    tid = tenant()
    admin = token_issuer.metadata(tid, subject="00aa")
    rep = token_issuer.metadata(tid, subject="00bb", roles=("member",))
    mine = await new_contact(contacts, admin, "Mine", owner_id="00bb")
    theirs = await new_contact(contacts, admin, "Theirs", owner_id="00cc")
    note = await stub.CreateInteraction(
        pb.CreateInteractionRequest(contact_id=theirs.id, interaction=pb.Interaction(kind="note", body="x")),
        metadata=admin,
    )
    for call in (
        stub.ListTimeline(pb.ListTimelineRequest(contact_id=theirs.id), metadata=rep),
        stub.GetInteraction(pb.GetInteractionRequest(id=note.id), metadata=rep),
        stub.DeleteInteraction(pb.DeleteInteractionRequest(id=note.id), metadata=rep),
        stub.CreateInteraction(
            pb.CreateInteractionRequest(contact_id=theirs.id, interaction=pb.Interaction(kind="note", body="x")),
            metadata=rep,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    logged = await stub.CreateInteraction(
        pb.CreateInteractionRequest(
            contact_id=mine.id, interaction=pb.Interaction(kind="call", direction="outbound", duration_seconds=60)
        ),
        metadata=rep,
    )
    assert logged.owner_id == "00bb"
    assert [i.id for i in await whole_timeline(stub, rep, mine.id)] == [logged.id]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateInteraction(
            pb.CreateInteractionRequest(
                contact_id=mine.id, interaction=pb.Interaction(kind="note", body="x", owner_id="00cc")
            ),
            metadata=rep,
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "owner_id" in violations(err.value)


async def test_merge_moves_entries_and_unmerge_restores_them(
    stub: timeline_pb2_grpc.TimelineServiceStub,
    contacts: customer_pb2_grpc.CustomerServiceStub,
    customer: ServiceRuntime,
    token_issuer: TokenIssuer,
) -> None:
    tid = tenant()
    md = token_issuer.metadata(tid)
    survivor, duplicate = await new_contact(contacts, md, "李雷"), await new_contact(contacts, md, "李雷")
    kept = await stub.CreateInteraction(
        pb.CreateInteractionRequest(contact_id=survivor.id, interaction=pb.Interaction(kind="note", body="a")),
        metadata=md,
    )
    moved = [
        await stub.CreateInteraction(
            pb.CreateInteractionRequest(contact_id=duplicate.id, interaction=pb.Interaction(kind="note", body=b)),
            metadata=md,
        )
        for b in ("b", "c")
    ]
    with tenant_scope(tid):
        async with customer.db.transaction() as s:
            ids = await timeline.repoint_contact(s, duplicate.id, survivor.id)
    assert ids == sorted(m.id for m in moved)
    assert {i.id for i in await whole_timeline(stub, md, survivor.id)} == {kept.id, *ids}
    assert await whole_timeline(stub, md, duplicate.id) == []
    with tenant_scope("someone-else"):  # another tenant's session moves nothing
        async with customer.db.transaction() as s:
            assert await timeline.repoint_contact(s, survivor.id, duplicate.id) == []
            assert await timeline.restore(s, ids, duplicate.id) == []
    with tenant_scope(tid):
        async with customer.db.transaction() as s:
            assert await timeline.restore(s, ids, duplicate.id) == ids
    assert [i.id for i in await whole_timeline(stub, md, survivor.id)] == [kept.id]
    assert {i.id for i in await whole_timeline(stub, md, duplicate.id)} == set(ids)
    with tenant_scope(tid):
        async with customer.db.transaction() as s:
            erased = await timeline.erase_contact(s, duplicate.id)
            assert erased == ids
            assert await timeline.contact_entries(s, duplicate.id) == []


def test_composite_page_tokens_do_not_pass_for_id_tokens() -> None:
    """crm_kit.pagination carries (occurred_at, id) keys for the timeline; id tokens keep working as before."""
    filters = {"contact_id": "c1", "kind": ["call"]}
    by_id = pagination.encode_token("0190a1b2-0000-7000-8000-000000000000", filters)
    by_key = pagination.encode_token(["2025-01-01T00:00:00+00:00", "0190a1b2"], filters)
    assert pagination.decode_token(by_id, filters) == "0190a1b2-0000-7000-8000-000000000000"
    assert pagination.decode_key(by_key, filters, 2) == ["2025-01-01T00:00:00+00:00", "0190a1b2"]
    assert pagination.decode_key("", filters, 2) is None
    for attempt in (
        lambda: pagination.decode_token(by_key, filters),
        lambda: pagination.decode_key(by_id, filters, 2),
        lambda: pagination.decode_key(by_key, filters, 3),
        lambda: pagination.decode_key(by_key, {**filters, "kind": []}, 2),
    ):
        with pytest.raises(InvalidArgument) as err:
            attempt()
        assert [v.field for v in err.value.violations] == ["page_token"]
