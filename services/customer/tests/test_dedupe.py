"""Duplicates: the explainable score, detection on create (warn and block), FindDuplicates, merge and unmerge
over a real gRPC channel, and tenant isolation on every path. The batch job is in test_dedupe_job.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import select, update

from crm.customer.v1 import customer_pb2 as cpb
from crm.customer.v1 import (
    customer_pb2_grpc,
    dedupe_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
    timeline_pb2,
    timeline_pb2_grpc,
)
from crm.customer.v1 import dedupe_pb2 as pb
from crm_customer import matching
from crm_customer.app import SPEC
from crm_customer.dedupe import MatchKey
from crm_customer.merge import ContactMerge
from crm_customer.models import Contact
from crm_kit.context import system_scope, tenant_scope
from crm_kit.db import utcnow
from crm_kit.db.system_tables import OutboxMessage
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
        SPEC, database_factory.create("dedupe"), nats_url=nats_url, verifier=token_issuer.verifier()
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
def stub(channel: grpc.aio.Channel) -> dedupe_pb2_grpc.DedupeServiceStub:
    return dedupe_pb2_grpc.DedupeServiceStub(channel)


def tenant() -> str:
    return f"t-dd-{uuid.uuid4().hex[:10]}"


async def create(stub: customer_pb2_grpc.CustomerServiceStub, md: Metadata, **fields: object) -> cpb.Contact:
    return await stub.CreateContact(cpb.CreateContactRequest(contact=cpb.Contact(**fields)), metadata=md)  # type: ignore[arg-type]


async def set_policy(stub: customer_pb2_grpc.CustomerServiceStub, md: Metadata, policy: str) -> None:
    await stub.UpdateCustomerSettings(cpb.UpdateCustomerSettingsRequest(duplicate_policy=policy), metadata=md)


# --- the score ----------------------------------------------------------------------------------------


def p(**values: object) -> matching.Profile:
    return matching.profile(values, str(uuid.uuid4()))


def test_score_explains_every_rule() -> None:
    a = p(first_name="Wei", last_name="Zhang", email="wei@x.com", phones=[{"number": "+8613800000001"}], account_id="A")
    b = p(
        first_name="Wei",
        last_name="Zhang",
        emails=[{"address": "other@x.com"}, {"address": "wei@x.com"}],
        phone="+8613800000001",
        account_id="A",
    )
    m = matching.score(a, b)
    assert m.score == 100
    assert [(r.rule, r.detail, r.points) for r in m.reasons] == [
        ("email", "wei@x.com", 70),
        ("phone", "+8613800000001", 70),
        ("name", "similarity 100: Wei Zhang ~ Wei Zhang", 40),
        ("account", "A", 30),
    ]
    # Only a secondary email in common: still the email rule.
    c = p(first_name="Wendy", last_name="Li", emails=[{"address": "x@y.cn"}, {"address": "wei@x.com"}])
    assert [(r.rule, r.points) for r in matching.score(a, c).reasons] == [("email", 70)]
    # Word order and spacing do not matter; Chinese names with or without a space, or split differently.
    assert matching.score(p(first_name="Wei", last_name="Zhang"), p(first_name="Zhang", last_name="Wei")).score == 40
    assert matching.score(p(first_name="伟", last_name="张"), p(last_name="张伟")).score == 40
    assert matching.score(p(last_name="张 伟"), p(last_name="张伟")).reasons[0].rule == "name"
    # A typo scores less; different people nothing; the account alone is no reason.
    typo = matching.score(p(first_name="Jonathan", last_name="Smith"), p(first_name="Jonathon", last_name="Smith"))
    assert 0 < typo.score < 40 and typo.reasons[0].rule == "name"
    assert matching.score(p(last_name="张伟", account_id="A"), p(last_name="李娜", account_id="A")).score == 0
    # An exact name at the same account reaches the default threshold.
    assert matching.score(p(last_name="王芳", account_id="A"), p(last_name="王芳", account_id="A")).score == 70


def test_match_keys_block_names() -> None:
    keys = matching.match_keys(p(first_name="伟", last_name="张", email="w@x.cn", phone="+8613800000001"))
    assert keys == {("email", "w@x.cn"), ("phone", "+8613800000001"), ("name", "张伟")}
    latin = matching.match_keys(p(first_name="Jonathan", last_name="Smith"))
    assert latin == {("name", "jonathansmith"), ("block", "smith|j")}
    assert matching.block_key(p(first_name="Jonathon", last_name="Smith")) == "smith|j"


# --- on create ----------------------------------------------------------------------------------------


async def test_create_warns_with_candidates(
    contacts: customer_pb2_grpc.CustomerServiceStub, token_issuer: TokenIssuer
) -> None:
    md = token_issuer.metadata(tenant())
    first = await create(
        contacts, md, first_name="伟", last_name="张", email="Zhang.Wei@Example.cn", phone="13800138000"
    )
    assert list(first.duplicate_candidates) == []
    second = await create(contacts, md, last_name="张伟", emails=[cpb.ContactEmail(address="zhang.wei@example.cn")])
    assert second.id and second.id != first.id  # warn: created
    [candidate] = second.duplicate_candidates
    assert (candidate.contact_id, candidate.display_name, candidate.score) == (first.id, "张伟", 100)
    assert [(r.rule, r.points) for r in candidate.reasons] == [("email", 70), ("name", 40)]
    third = await create(contacts, md, first_name="芳", last_name="王", phone="+86 138 0013 8000")
    assert [(c.contact_id, [r.rule for r in c.reasons]) for c in third.duplicate_candidates] == [(first.id, ["phone"])]
    unrelated = await create(contacts, md, first_name="娜", last_name="李", email="li.na@example.cn")
    assert list(unrelated.duplicate_candidates) == []
    # The candidates are no part of the stored contact.
    got = await contacts.GetContact(cpb.GetContactRequest(id=second.id), metadata=md)
    assert list(got.duplicate_candidates) == []


async def test_create_blocks_when_the_policy_says_so(
    contacts: customer_pb2_grpc.CustomerServiceStub, customer: ServiceRuntime, token_issuer: TokenIssuer
) -> None:
    tid = tenant()
    md = token_issuer.metadata(tid)
    await set_policy(contacts, md, "block")
    first = await create(
        contacts, md, first_name="Ada", last_name="Lovelace", email="ada@example.com", phone="+442071234567"
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(
            contacts, md, first_name="Augusta", last_name="King", emails=[cpb.ContactEmail(address="ADA@example.com")]
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.id in (err.value.details() or "") and "score 70" in (err.value.details() or "")
    assert set(violations(err.value)) == {"email"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(contacts, md, first_name="ada", last_name="LOVELACE", phone="+44 20 7123 4567")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and set(violations(err.value)) == {"phone", "last_name"}
    listed = await contacts.ListContacts(cpb.ListContactsRequest(), metadata=md)
    assert [c.id for c in listed.contacts] == [first.id]  # nothing written
    # An admin may force it; a member may not.
    member = token_issuer.metadata(tid, subject="rep-1", roles=("member",))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await contacts.CreateContact(
            cpb.CreateContactRequest(contact=cpb.Contact(last_name="X", email="ada@example.com"), allow_duplicate=True),
            metadata=member,
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.id not in (err.value.details() or "")  # the member cannot see that contact
    forced = await contacts.CreateContact(
        cpb.CreateContactRequest(contact=cpb.Contact(last_name="X", email="ada@example.com"), allow_duplicate=True),
        metadata=md,
    )
    assert forced.id and forced.duplicate_candidates[0].contact_id == first.id


async def test_name_alone_is_not_blocked(
    contacts: customer_pb2_grpc.CustomerServiceStub, token_issuer: TokenIssuer
) -> None:
    md = token_issuer.metadata(tenant())
    await set_policy(contacts, md, "block")
    await create(contacts, md, last_name="张伟")
    second = await create(contacts, md, last_name="张伟")  # two people called 张伟: 40 points, under 70
    assert list(second.duplicate_candidates) == []


# --- FindDuplicates and isolation ---------------------------------------------------------------------


async def test_find_duplicates_and_isolation(
    contacts: customer_pb2_grpc.CustomerServiceStub, stub: dedupe_pb2_grpc.DedupeServiceStub, token_issuer: TokenIssuer
) -> None:
    tid = tenant()
    md, other = token_issuer.metadata(tid), token_issuer.metadata(tenant())
    account = await contacts.CreateAccount(cpb.CreateAccountRequest(account=cpb.Account(name="ACME")), metadata=md)
    a = await create(contacts, md, first_name="Mary", last_name="Smith", account_id=account.id)
    b = await create(contacts, md, first_name="Mary", last_name="Smith", account_id=account.id)
    c = await create(contacts, md, first_name="Marie", last_name="Smith", email="m@x.com")
    # The same person in another tenant: never a candidate.
    foreign = await create(contacts, other, first_name="Mary", last_name="Smith", email="m@x.com")
    assert list(foreign.duplicate_candidates) == []

    found = await stub.FindDuplicates(pb.FindDuplicatesRequest(contact_id=a.id), metadata=md)
    assert [(i.contact_id, i.score) for i in found.items] == [(b.id, 70)]
    assert [r.rule for r in found.items[0].reasons] == ["name", "account"]
    low = await stub.FindDuplicates(pb.FindDuplicatesRequest(contact_id=a.id, min_score=10), metadata=md)
    assert [i.contact_id for i in low.items] == [b.id, c.id]
    assert foreign.id not in {i.contact_id for i in low.items}
    for bad, fields in (({"contact_id": ""}, {"contact_id"}), ({"contact_id": a.id, "min_score": 101}, {"min_score"})):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.FindDuplicates(pb.FindDuplicatesRequest(**bad), metadata=md)  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and set(violations(err.value)) == fields
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.FindDuplicates(pb.FindDuplicatesRequest(contact_id=a.id), metadata=other)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Merging another tenant's contact is refused, naming duplicate_id; nothing changes on either side.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.MergeContacts(pb.MergeContactsRequest(id=a.id, duplicate_id=foreign.id), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and set(violations(err.value)) == {"duplicate_id"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.MergeContacts(pb.MergeContactsRequest(id=foreign.id, duplicate_id=a.id), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await contacts.GetContact(cpb.GetContactRequest(id=foreign.id), metadata=other)).version == 1


# --- merge and unmerge --------------------------------------------------------------------------------


async def test_merge_moves_everything_and_unmerge_restores(
    contacts: customer_pb2_grpc.CustomerServiceStub,
    stub: dedupe_pb2_grpc.DedupeServiceStub,
    channel: grpc.aio.Channel,
    customer: ServiceRuntime,
    token_issuer: TokenIssuer,
) -> None:
    tid = tenant()
    md = token_issuer.metadata(tid, subject="merger-1")
    timeline = timeline_pb2_grpc.TimelineServiceStub(channel)
    privacy = privacy_pb2_grpc.PrivacyServiceStub(channel)
    survivor = await create(
        contacts,
        md,
        first_name="Wei",
        last_name="Zhang",
        email="wei@x.com",
        tags=["vip"],
        job_title="",
        interests=["golf"],
    )
    duplicate = await create(
        contacts,
        md,
        first_name="Wei",
        last_name="Zhang",
        emails=[cpb.ContactEmail(address="zhang.wei@y.cn"), cpb.ContactEmail(address="wei@x.com")],
        phone="+8613800000001",
        tags=["beijing", "vip"],
        job_title="CTO",
        birthday="1980-02-03",
        interests=["golf", "tea"],
        classification="core",
        external_id="ERP-9",
    )
    assert duplicate.duplicate_candidates[0].contact_id == survivor.id
    call = await timeline.CreateInteraction(
        timeline_pb2.CreateInteractionRequest(
            contact_id=duplicate.id, interaction=timeline_pb2.Interaction(kind="note", body="met at the fair")
        ),
        metadata=md,
    )
    await privacy.SetConsent(
        privacy_pb2.SetConsentRequest(contact_id=duplicate.id, channel="email", status="granted", source="web_form"),
        metadata=md,
    )

    # Bad requests name the field; a stale version is ABORTED; nothing happens.
    for request, code, field in (
        (
            pb.MergeContactsRequest(id=survivor.id, duplicate_id=survivor.id),
            grpc.StatusCode.INVALID_ARGUMENT,
            "duplicate_id",
        ),
        (pb.MergeContactsRequest(id=survivor.id), grpc.StatusCode.INVALID_ARGUMENT, "duplicate_id"),
        (
            pb.MergeContactsRequest(id=survivor.id, duplicate_id=duplicate.id, field_choices={"job_title": "theirs"}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "field_choices.job_title",
        ),
        (
            pb.MergeContactsRequest(
                id=survivor.id, duplicate_id=duplicate.id, field_choices={"search_text": "survivor"}
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "field_choices.search_text",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.MergeContacts(request, metadata=md)
        assert err.value.code() == code and field in violations(err.value), (request, violations(err.value))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.MergeContacts(
            pb.MergeContactsRequest(id=survivor.id, duplicate_id=duplicate.id, duplicate_version=7), metadata=md
        )
    assert err.value.code() == grpc.StatusCode.ABORTED

    merged = await stub.MergeContacts(
        pb.MergeContactsRequest(
            id=survivor.id,
            duplicate_id=duplicate.id,
            field_choices={"classification": "duplicate"},
            survivor_version=survivor.version,
            duplicate_version=duplicate.version,
        ),
        metadata=md,
    )
    s = merged.survivor
    assert (merged.survivor_id, merged.duplicate_id, merged.merged_by) == (survivor.id, duplicate.id, "merger-1")
    assert s.version == survivor.version + 1
    assert s.email == "wei@x.com" and [e.address for e in s.emails] == ["wei@x.com", "zhang.wei@y.cn"]
    assert [e.primary for e in s.emails] == [True, False]
    assert s.phone == "+8613800000001" and s.phones[0].primary
    assert list(s.tags) == ["vip", "beijing"] and list(s.interests) == ["golf", "tea"]
    assert (s.job_title, s.birthday, s.classification, s.external_id) == ("CTO", "1980-02-03", "core", "ERP-9")
    assert dict(merged.moved) == {"interactions": 1, "consents": 1, "field_history": 3}
    assert merged.duplicate.id == duplicate.id and merged.duplicate.job_title == "CTO"
    assert merged.expire_time.ToDatetime() - merged.merge_time.ToDatetime() == timedelta(days=30)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await contacts.GetContact(cpb.GetContactRequest(id=duplicate.id), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    items = (await timeline.ListTimeline(timeline_pb2.ListTimelineRequest(contact_id=survivor.id), metadata=md)).items
    assert [i.id for i in items] == [call.id]
    consents = await privacy.ListConsents(privacy_pb2.ListConsentsRequest(contact_id=survivor.id), metadata=md)
    assert [c.status for c in consents.consents if c.channel == "email"] == ["granted"]
    found = await stub.FindDuplicates(pb.FindDuplicatesRequest(contact_id=survivor.id, min_score=1), metadata=md)
    assert list(found.items) == []  # the duplicate's match keys went with it
    # Merging it again, or merging into it: clear errors naming duplicate_id / the contact.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.MergeContacts(pb.MergeContactsRequest(id=survivor.id, duplicate_id=duplicate.id), metadata=md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and set(violations(err.value)) == {"duplicate_id"}

    with system_scope():
        async with customer.db.transaction() as session:
            rows = (
                await session.scalars(
                    select(OutboxMessage).where(OutboxMessage.tenant_id == tid).order_by(OutboxMessage.id)
                )
            ).all()
    events = [Event.from_json(r.payload) for r in rows if r.type.startswith("crm.customer.contact.")]
    assert [(e.type, e.subject) for e in events][-3:] == [
        ("crm.customer.contact.deleted", duplicate.id),
        ("crm.customer.contact.updated", survivor.id),
        ("crm.customer.contact.merged", survivor.id),
    ]
    assert events[-1].data["survivor_id"] == survivor.id and events[-1].data["duplicate_id"] == duplicate.id

    # After the merge someone edits a field the merge set (job_title) and one it did not (department).
    edited = await contacts.UpdateContact(
        cpb.UpdateContactRequest(
            contact=cpb.Contact(id=survivor.id, job_title="CEO", department="Board"),
            update_mask={"paths": ["job_title", "department"]},
        ),
        metadata=md,
    )
    listed = await stub.ListContactMerges(pb.ListContactMergesRequest(contact_id=survivor.id), metadata=md)
    assert [m.id for m in listed.items] == [merged.id]

    undone = await stub.UnmergeContacts(pb.UnmergeContactsRequest(merge_id=merged.id), metadata=md)
    assert undone.unmerged_by == "merger-1" and undone.unmerge_time.seconds > 0
    back = await contacts.GetContact(cpb.GetContactRequest(id=duplicate.id), metadata=md)
    assert back.version == duplicate.version + 1
    assert (back.external_id, back.job_title, list(back.tags)) == ("ERP-9", "CTO", ["beijing", "vip"])
    s = await contacts.GetContact(cpb.GetContactRequest(id=survivor.id), metadata=md)
    assert s.version == edited.version + 1
    assert [e.address for e in s.emails] == ["wei@x.com"] and s.phone == "" and list(s.tags) == ["vip"]
    assert (s.classification, s.external_id, s.birthday) == ("general", "", "")
    assert (s.job_title, s.department) == ("CEO", "Board")  # changed after the merge: kept
    items = (await timeline.ListTimeline(timeline_pb2.ListTimelineRequest(contact_id=duplicate.id), metadata=md)).items
    assert [i.id for i in items] == [call.id]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UnmergeContacts(pb.UnmergeContactsRequest(merge_id=merged.id), metadata=md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_unmerge_window_and_isolation(
    contacts: customer_pb2_grpc.CustomerServiceStub,
    stub: dedupe_pb2_grpc.DedupeServiceStub,
    customer: ServiceRuntime,
    token_issuer: TokenIssuer,
) -> None:
    tid = tenant()
    md, other = token_issuer.metadata(tid), token_issuer.metadata(tenant())
    a = await create(contacts, md, last_name="王芳", email="f@x.cn")
    b = await create(contacts, md, last_name="王芳", email="f@x.cn")
    merged = await stub.MergeContacts(pb.MergeContactsRequest(id=a.id, duplicate_id=b.id), metadata=md)
    # Another tenant sees nothing of it.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UnmergeContacts(pb.UnmergeContactsRequest(merge_id=merged.id), metadata=other)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListContactMerges(pb.ListContactMergesRequest(contact_id=a.id), metadata=other)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # A member who does not own the contacts cannot merge them.
    member = token_issuer.metadata(tid, subject="rep-2", roles=("member",))
    c = await create(contacts, md, last_name="李娜")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.MergeContacts(pb.MergeContactsRequest(id=a.id, duplicate_id=c.id), metadata=member)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Past the retention window: FAILED_PRECONDITION naming merge_id.
    async with customer.db.transaction() as session:
        with tenant_scope(tid):
            await session.execute(
                update(ContactMerge)
                .where(ContactMerge.id == merged.id)
                .values(expire_time=utcnow() - timedelta(seconds=1))
            )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UnmergeContacts(pb.UnmergeContactsRequest(merge_id=merged.id), metadata=md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and set(violations(err.value)) == {"merge_id"}
    async with customer.db.transaction() as session:
        with tenant_scope(tid):
            keys = (await session.execute(select(MatchKey.contact_id).where(MatchKey.contact_id == b.id))).all()
            assert keys == [] and await session.get(Contact, b.id) is None
