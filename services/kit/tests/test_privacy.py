"""The generic part of privacy (crm_kit.privacy), on SQLite and PostgreSQL as the application role: the
registry's export and erasure of declared tables, audit redaction, the erased-ids tombstone, scrubbing of
the kit's outbox and dead letters, and the consumer handler with its stream purge on a real nats-server."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from google.protobuf import struct_pb2
from sqlalchemy import JSON, Boolean, Date, Integer, String, Text, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column

from crm.common.v1 import personal_data_pb2
from crm_kit.audit import REDACTED, AuditEntry, record_audit
from crm_kit.context import Principal, tenant_scope
from crm_kit.crud import ResourceStore
from crm_kit.db import Database, Resource, TenantScoped, make_base, utcnow, uuid7
from crm_kit.db.engine import create_engine
from crm_kit.db.migrations import create_audit_table, create_system_tables, enable_tenant_rls, grant_app_role
from crm_kit.db.system_tables import PENDING, SENT, DeadLetter, OutboxMessage
from crm_kit.errors import InvalidArgument, NotFound, PermissionDenied
from crm_kit.events import DEFAULT_STREAM, Event, EventBus, EventConsumer, ensure_stream, record_event
from crm_kit.events.envelope import nats_subject
from crm_kit.privacy import (
    ERASED_EVENTS,
    ERASED_TYPE,
    ErasedContact,
    Holding,
    Mentions,
    PersonalData,
    PersonalDataServicer,
    blank,
    create_privacy_tables,
    is_erased,
    undeclared_tables,
)
from crm_kit.privacy_scrub import identifying_terms, purge_stream, redact_json
from crm_kit.testing.databases import DatabaseFactory, DatabaseUrls

Base: Any = make_base()


class Person(Base, Resource):
    __tablename__ = "people"
    first_name: Mapped[str] = mapped_column(String(100), default="")
    last_name: Mapped[str] = mapped_column(String(100), default="")
    email: Mapped[str] = mapped_column(String(100), default="")
    phone: Mapped[str] = mapped_column(String(32), default="")


class Deal(Base, Resource):
    __tablename__ = "deals"
    contact_id: Mapped[str] = mapped_column(String(36), default="")
    contact_name: Mapped[str] = mapped_column(String(255), default="")
    title: Mapped[str] = mapped_column(String(255), default="")


class Note(Base, Resource):
    __tablename__ = "notes"
    contact_id: Mapped[str] = mapped_column(String(36), default="")
    body: Mapped[str] = mapped_column(Text, default="")


class Profile(Base, TenantScoped):
    """Anonymised with a keep list: every other column is blanked according to its type."""

    __tablename__ = "profiles"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    contact_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    nickname: Mapped[str] = mapped_column(String(64), default="")
    score: Mapped[int] = mapped_column(Integer, default=0)
    visits: Mapped[int] = mapped_column(Integer, default=0)
    vip: Mapped[bool] = mapped_column(Boolean, default=False)
    born: Mapped[date | None] = mapped_column(Date, nullable=True)
    links: Mapped[list[Any]] = mapped_column(JSON, default=list)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Log(Base, TenantScoped):
    __tablename__ = "logs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)


def deal_message(row: Deal) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(
        {
            "id": row.id,
            "contact_id": row.contact_id,
            "contact_name": row.contact_name,
            "title": row.title,
            "version": row.version,
        }
    )
    return message


DEALS = ResourceStore(Deal, context="test", entity="deal", to_message=deal_message)

REGISTRY = PersonalData(
    "test",
    [
        Holding(Note, "notes", audit_entity="note"),
        Holding(Deal, "deals", anonymise={"contact_name": ""}, pii=("contact_name",), audit_entity="deal", store=DEALS),
        Holding(Profile, "profile", keep=("score",), single=True),
        Holding(
            Person,
            "person",
            link="id",
            single=True,
            required=True,
            pii=("first_name", "last_name", "email", "phone"),
            audit_entity="person",
        ),
        Mentions(Note, "note_mentions", ("body",)),
    ],
    without_personal_data={"logs": "ids only"},
)

# Not the end-to-end test's person: the session's nats-server is shared.
NAME = ("Yorick", "Xanthippe-Erase")
EMAIL = "yx@kit-erase.example"
PHONE = "+8613800138000"


def _schema(connection: Connection, app_role: str) -> None:
    Base.metadata.create_all(connection)
    ops = Operations(MigrationContext.configure(connection))
    create_system_tables(ops)
    create_audit_table(ops)
    create_privacy_tables(ops)
    for table in Base.metadata.tables:
        enable_tenant_rls(ops, table)
    if connection.dialect.name == "postgresql" and app_role:
        grant_app_role(connection, app_role)


@pytest.fixture(scope="module")
def urls(database_factory: DatabaseFactory) -> DatabaseUrls:
    return database_factory.create("privacy")


@pytest.fixture(scope="module")
async def db(urls: DatabaseUrls) -> AsyncIterator[Database]:
    owner = create_engine(urls.owner)
    async with owner.begin() as conn:
        await conn.run_sync(_schema, urls.app_role)
    await owner.dispose()
    database = Database(urls.app)
    yield database
    await database.dispose()


def tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def admin(tenant_id: str) -> Principal:
    return Principal("u-admin", tenant_id, roles=("admin",))


async def person_with_data(db: Database, tenant_id: str) -> str:
    """A person with a deal, a note and a profile, each write audited and in the outbox."""
    with tenant_scope(tenant_id, admin(tenant_id)):
        async with db.transaction() as s:
            person = Person(id=uuid7(), first_name=NAME[0], last_name=NAME[1], email=EMAIL, phone=PHONE, version=1)
            s.add(person)
            await s.flush()
            await record_audit(s, action="create", entity="person", entity_id=person.id, after={"email": EMAIL})
            await record_event(
                s, source="crm.test", type="crm.test.person.created", subject=person.id, data={"email": EMAIL}
            )
            await DEALS.create(s, {"contact_id": person.id, "contact_name": " ".join(NAME), "title": "Renewal"})
            note = Note(id=uuid7(), contact_id=person.id, body=f"called {NAME[0]}", version=1)
            s.add(note)
            await s.flush()
            await record_audit(s, action="create", entity="note", entity_id=note.id, after={"body": note.body})
            # Someone else's note quoting the person by email and full name (free text, no id).
            other = Note(
                id=uuid7(),
                contact_id=str(uuid.uuid4()),
                body=f"cc {EMAIL}; met {NAME[0]} {NAME[1]} and {NAME[0]} again",
                version=1,
            )
            s.add(other)
            await s.flush()
            await record_audit(
                s, action="create", entity="note", entity_id=other.id, after={"body": other.body, "kind": "memo"}
            )
            s.add(
                Profile(
                    contact_id=person.id,
                    nickname="zeb",
                    score=7,
                    visits=3,
                    vip=True,
                    born=date(1990, 5, 17),
                    links=["https://example.com/zeb"],
                    extra={"wechat": "zeb_wx"},
                )
            )
    return person.id


async def test_export_returns_every_declared_row_and_its_audit_entries(db: Database) -> None:
    t = tenant()
    pid = await person_with_data(db, t)
    with tenant_scope(t):
        async with db.transaction() as s:
            doc, erased = await REGISTRY.export(s, pid)
    assert erased is None
    assert doc["person"]["email"] == EMAIL and doc["person"]["id"] == pid and "tenant_id" not in doc["person"]
    assert [d["contact_name"] for d in doc["deals"]] == ["Yorick Xanthippe-Erase"]
    assert [n["body"] for n in doc["notes"]] == ["called Yorick"]
    # Free text elsewhere quoting the person is part of what is held about them (their own note is not
    # listed twice).
    assert [n["body"] for n in doc["note_mentions"]] == [f"cc {EMAIL}; met Yorick Xanthippe-Erase and Yorick again"]
    assert doc["profile"]["born"] == "1990-05-17" and doc["profile"]["extra"] == {"wechat": "zeb_wx"}
    assert {(e["entity"], e["action"]) for e in doc["audit_log"]} == {
        ("person", "create"),
        ("deal", "create"),
        ("note", "create"),
    }
    json.dumps(doc)  # plain JSON all the way down

    # Another tenant does not see the person: the required holding makes it NOT_FOUND.
    with tenant_scope(tenant()):
        async with db.transaction() as s:
            with pytest.raises(NotFound):
                await REGISTRY.export(s, pid)


async def test_erase_deletes_anonymises_redacts_audit_and_records_the_tombstone(db: Database) -> None:
    t = tenant()
    pid = await person_with_data(db, t)
    with tenant_scope(t, admin(t)):
        async with db.transaction() as s:
            report = await REGISTRY.erase(s, pid)
        assert report.rows == {
            "notes": 1,
            "deals": 1,
            "profile": 1,
            "person": 1,
            "note_mentions": 1,
            "audit_quotes": 1,  # the other note's entry quoting the person
        }
        async with db.transaction() as s:
            assert await s.get(Person, pid) is None
            [other_note] = list(await s.scalars(select(Note)))
            # The identifying values are replaced; a bare first name is not (it identifies nobody).
            assert other_note.body == "cc [erased]; met [erased] and Yorick again" and other_note.version == 2
            [deal] = list(await s.scalars(select(Deal)))
            assert (deal.contact_id, deal.contact_name, deal.title, deal.version) == (pid, "", "Renewal", 2)
            profile = (await s.scalars(select(Profile))).one()
            assert (profile.score, profile.nickname, profile.visits, profile.vip) == (7, "", 0, False)
            assert (profile.born, profile.links, profile.extra) == (None, [], {})
            assert await is_erased(s, pid)
            audit_values = [(e.entity, e.action, e.before, e.after) for e in await s.scalars(select(AuditEntry))]
            doc, erased = await REGISTRY.export(s, pid)
    # The person's and the note's entries are blanked whole, the deal's only in the anonymised field;
    # the erasure of the deal is itself audited, without the old value.
    assert ("person", "create", None, {"email": REDACTED}) in audit_values
    assert ("note", "create", None, {"body": REDACTED}) in audit_values
    assert ("note", "create", None, {"body": REDACTED, "kind": "memo"}) in audit_values  # only the quoting field
    deal_create = next(a for a in audit_values if a[:2] == ("deal", "create"))
    assert deal_create[3]["contact_name"] == REDACTED and deal_create[3]["title"] == "Renewal"
    assert ("deal", "erase", None, {"contact_name": ""}) in audit_values
    assert erased == report.erased_at
    assert doc["person"] is None and doc["notes"] == [] and doc["deals"][0]["contact_name"] == ""
    assert doc["note_mentions"] == []  # nothing identifies the person any more
    assert "Yorick" not in json.dumps(doc, ensure_ascii=False)

    # The outbox: the person's own events are gone, the deal's fresh `updated` event carries no name.
    with tenant_scope(t):
        async with db.transaction() as s:
            outbox = list(await s.scalars(select(OutboxMessage).where(OutboxMessage.tenant_id == t)))
    assert [m.type for m in outbox] == ["crm.test.deal.updated"]
    payload = json.loads(outbox[0].payload)["data"]
    assert payload["deal"]["contact_name"] == "" and payload["changed"] == ["contact_name"]
    assert payload["reason"] == "erasure"

    # A second run changes nothing and emits nothing.
    with tenant_scope(t, admin(t)):
        async with db.transaction() as s:
            again = await REGISTRY.erase(s, pid)
        assert again.erased_at == report.erased_at
        async with db.transaction() as s:
            assert len(list(await s.scalars(select(OutboxMessage).where(OutboxMessage.tenant_id == t)))) == 1


async def test_outbox_and_dead_letters_are_scrubbed_in_the_tenant_only(db: Database) -> None:
    t, other = tenant(), tenant()
    pid = await person_with_data(db, t)
    someone = str(uuid.uuid4())
    with tenant_scope(t):
        async with db.transaction() as s:
            # Sent and pending events mentioning the person: deleted. A pending event about someone else
            # that quotes the person's email: redacted in place. A sent one: deleted.
            sent = await record_event(s, source="crm.test", type="crm.test.person.updated", subject=pid, data={})
            quoted = await record_event(
                s,
                source="crm.test",
                type="crm.test.ticket.created",
                subject=someone,
                data={"ticket": {"id": someone, "text": f"forwarded by {EMAIL} and 擦除单元", "n": 1}},
            )
            quoted_sent = await record_event(
                s, source="crm.test", type="crm.test.ticket.updated", subject=someone, data={"cc": EMAIL}
            )
            await s.flush()
            for row_id, status in ((sent.id, SENT), (quoted_sent.id, SENT), (quoted.id, PENDING)):
                (await s.get(OutboxMessage, row_id)).status = status  # type: ignore[union-attr]
            s.add_all(
                [
                    _dead_letter(t, json.dumps({"data": {"contact_id": pid}}), "boom"),
                    _dead_letter(t, json.dumps({"data": {"to": EMAIL}}), f"ValueError: bad address {EMAIL}"),
                ]
            )
    with tenant_scope(other):
        async with db.transaction() as s:
            await record_event(s, source="crm.test", type="crm.test.ticket.created", subject="x", data={"to": EMAIL})
            s.add(_dead_letter(other, json.dumps({"to": EMAIL}), EMAIL))

    # The person's full name and a CJK name given as PII terms are redacted too.
    registry = PersonalData("test", [*REGISTRY.declarations])
    with tenant_scope(t, admin(t)):
        async with db.transaction() as s:
            report = await registry.erase(s, pid)
    # person.created + deal.created + person.updated + ticket.updated (sent); ticket.created redacted.
    assert (report.scrubbed.outbox_deleted, report.scrubbed.outbox_redacted) == (4, 1)
    assert (report.scrubbed.dead_letters_deleted, report.scrubbed.dead_letters_redacted) == (1, 1)
    with tenant_scope(t):
        async with db.transaction() as s:
            rows = {m.id: m for m in await s.scalars(select(OutboxMessage).where(OutboxMessage.tenant_id == t))}
            letters = list(await s.scalars(select(DeadLetter).where(DeadLetter.tenant_id == t)))
    assert sent.id not in rows and quoted_sent.id not in rows
    text = json.loads(rows[quoted.id].payload)["data"]["ticket"]["text"]
    assert text == "forwarded by [erased] and 擦除单元"  # only the person's own values are replaced
    [letter] = letters
    assert EMAIL not in letter.payload and EMAIL not in letter.error and "[erased]" in letter.error
    with tenant_scope(other):
        async with db.transaction() as s:
            untouched = list(await s.scalars(select(OutboxMessage).where(OutboxMessage.tenant_id == other)))
            other_letters = list(await s.scalars(select(DeadLetter).where(DeadLetter.tenant_id == other)))
    assert EMAIL in untouched[0].payload and EMAIL in other_letters[0].error


def _dead_letter(tenant_id: str, payload: str, error: str) -> DeadLetter:
    return DeadLetter(
        id=uuid7(),
        consumer="test",
        stream_sequence=1,
        subject="crm.events.x.test.a.b",
        event_id=uuid7(),
        tenant_id=tenant_id,
        payload=payload,
        error=error,
        deliveries=8,
        created_at=utcnow(),
    )


def test_identifying_terms_are_emails_phones_and_full_names() -> None:
    terms = identifying_terms(
        ["Li", "Yorick", EMAIL, PHONE, "Yorick Xanthippe-Erase", "擦除单元", "王伟", {"a": ["x@y.z"]}, 5, "  "]
    )
    assert terms == {EMAIL, PHONE, "Yorick Xanthippe-Erase", "擦除单元", "x@y.z"}


def test_redaction_rewrites_strings_inside_json_and_plain_text() -> None:
    doc = json.dumps({"a": "mail yx@kit-erase.example now", "b": ["yx@kit-erase.example"], "c": 3}, ensure_ascii=False)
    assert json.loads(redact_json(doc, [EMAIL])) == {"a": "mail [erased] now", "b": ["[erased]"], "c": 3}
    assert redact_json("not json yx@kit-erase.example", [EMAIL]) == "not json [erased]"


def test_blank_values_follow_the_column_type() -> None:
    cols = Profile.__table__.c
    assert blank(cols.nickname, "x") == ""
    assert blank(cols.visits, 3) == 0
    assert blank(cols.vip, True) is False
    assert blank(cols.born, date(2000, 1, 1)) is None  # nullable
    assert blank(cols.links, ["a"]) == [] and blank(cols.extra, {"a": 1}) == {}


def test_every_table_must_be_declared() -> None:
    assert undeclared_tables(Base.metadata, REGISTRY) == []
    partial = PersonalData("test", [Holding(Note, "notes")])
    assert undeclared_tables(Base.metadata, partial) == ["deals", "logs", "people", "profiles"]
    with pytest.raises(ValueError, match="no columns"):
        PersonalData("test", [Holding(Note, "notes", pii=("nope",))])
    with pytest.raises(ValueError, match="no columns"):
        PersonalData("test", [Mentions(Note, "mentions", ("nope",))])
    with pytest.raises(ValueError, match="duplicate"):
        PersonalData("test", [Holding(Note, "notes"), Holding(Deal, "notes")])


async def test_the_export_service_is_for_admins_and_managers_with_a_valid_id(db: Database) -> None:
    t = tenant()
    pid = await person_with_data(db, t)
    servicer = PersonalDataServicer(db, REGISTRY)
    request = personal_data_pb2.ExportPersonalDataRequest(contact_id=pid)
    with tenant_scope(t, Principal("u-rep", t, roles=("member",))), pytest.raises(PermissionDenied):
        await servicer.ExportPersonalData(request, None)  # type: ignore[arg-type]
    with tenant_scope(t, Principal("u-boss", t, roles=("manager",))):
        with pytest.raises(InvalidArgument) as bad:
            await servicer.ExportPersonalData(personal_data_pb2.ExportPersonalDataRequest(), None)  # type: ignore[arg-type]
        assert bad.value.violations[0].field == "contact_id"
        response = await servicer.ExportPersonalData(request, None)  # type: ignore[arg-type]
    assert (response.service, response.contact_id, response.erased) == ("test", pid, False)
    assert response.data["person"]["email"] == EMAIL


# --- the consumer handler and the stream ----------------------------------------------------------------


@pytest.fixture(scope="module")
async def bus(nats_url: str) -> AsyncIterator[EventBus]:
    bus = await EventBus.connect([nats_url], name="privacy-tests")
    await ensure_stream(bus.js, DEFAULT_STREAM, update_existing=False)
    yield bus
    await bus.close()


async def publish(bus: EventBus, tenant_id: str, event_type: str, subject: str, data: dict[str, Any]) -> int:
    event = Event(
        id=uuid7(), source="crm.test", type=event_type, subject=subject, time=utcnow(), tenant_id=tenant_id, data=data
    )
    ack = await bus.js.publish(event.nats_subject, event.to_json(), headers={"Nats-Msg-Id": event.id})
    return int(ack.seq)


async def test_the_stream_loses_the_contexts_events_about_the_contact(bus: EventBus) -> None:
    t, other = tenant(), tenant()
    pid = str(uuid.uuid4())
    about = await publish(bus, t, "crm.test.deal.created", "d1", {"deal": {"contact_id": pid, "contact_name": "Zeb"}})
    unrelated = await publish(bus, t, "crm.test.deal.created", "d2", {"deal": {"contact_id": "someone-else"}})
    elsewhere = await publish(bus, t, "crm.sales.deal.created", "d3", {"deal": {"contact_id": pid}})
    erased = await publish(bus, t, "crm.test.contact.erased", pid, {"contact_id": pid})
    other_tenant = await publish(bus, other, "crm.test.deal.created", "d4", {"deal": {"contact_id": pid}})

    deleted = await purge_stream(bus.js, DEFAULT_STREAM, tenant_id=t, context="test", contact_id=pid)
    assert deleted == 1
    kept = {unrelated, elsewhere, erased, other_tenant}
    for seq in kept:
        assert (await bus.js.get_msg(DEFAULT_STREAM, seq)).seq == seq
    from nats.js.errors import NotFoundError

    with pytest.raises(NotFoundError):
        await bus.js.get_msg(DEFAULT_STREAM, about)
    assert await purge_stream(bus.js, DEFAULT_STREAM, tenant_id=t, context="test", contact_id=pid) == 0
    assert await purge_stream(bus.js, DEFAULT_STREAM, tenant_id=tenant(), context="test", contact_id=pid) == 0


async def test_the_erasure_consumer_erases_once_and_purges_the_stream(db: Database, bus: EventBus) -> None:
    t = tenant()
    pid = await person_with_data(db, t)
    before = await publish(bus, t, "crm.test.person.created", pid, {"person": {"id": pid, "email": EMAIL}})
    consumer = EventConsumer(
        db,
        bus,
        name=f"test-privacy-{uuid.uuid4().hex[:8]}",
        subjects=[ERASED_EVENTS],
        handler=REGISTRY.erasure_handler(bus, DEFAULT_STREAM),
    )
    try:
        erased_event = await publish(bus, t, ERASED_TYPE, pid, {"contact_id": pid})
        handled = 0
        for _ in range(50):
            handled += await consumer.process_available(timeout=0.2)
            with tenant_scope(t):
                async with db.transaction() as s:
                    if await is_erased(s, pid):
                        break
        assert handled >= 1 and consumer.applied >= 1
        with tenant_scope(t):
            async with db.transaction() as s:
                assert await s.get(Person, pid) is None
                [tombstone] = list(await s.scalars(select(ErasedContact)))
                assert tombstone.contact_id == pid and tombstone.erased_at.tzinfo is not None
        from nats.js.errors import NotFoundError

        with pytest.raises(NotFoundError):
            await bus.js.get_msg(DEFAULT_STREAM, before)
        assert (await bus.js.get_msg(DEFAULT_STREAM, erased_event)).seq == erased_event
    finally:
        await consumer.close()
        await bus.js.delete_consumer(DEFAULT_STREAM, consumer.name)


async def test_a_malformed_erasure_event_is_refused(db: Database) -> None:
    from crm_kit.events import MalformedEvent

    t = tenant()
    event = Event(
        id=uuid7(), source="crm.customer", type=ERASED_TYPE, subject="", time=datetime.now(UTC), tenant_id=t, data={}
    )
    with tenant_scope(t):
        async with db.transaction() as s:
            with pytest.raises(MalformedEvent):
                await REGISTRY.handle_erased(s, event)


def test_erased_events_subject() -> None:
    assert ERASED_EVENTS == "crm.events.*.customer.contact.erased"
    assert nats_subject("t1", ERASED_TYPE) == "crm.events.t1.customer.contact.erased"
