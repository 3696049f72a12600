"""Privacy in the customer service over real gRPC, on SQLite and PostgreSQL: consent per channel with its
history and events, the export of a person (crm.common.v1.PersonalDataService), and erasure (roles, tenant
isolation, the tombstone, and no trace of the person left in the customer database)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import select

from crm.common.v1 import personal_data_pb2, personal_data_pb2_grpc
from crm.customer.v1 import (
    customer_pb2,
    customer_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
    timeline_pb2,
    timeline_pb2_grpc,
)
from crm_customer.app import SPEC
from crm_customer.models import Base
from crm_customer.privacy import PERSONAL_DATA
from crm_kit.audit import AuditEntry
from crm_kit.context import system_scope, tenant_scope
from crm_kit.db.system_tables import OutboxMessage
from crm_kit.privacy import ErasedContact, undeclared_tables
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory, DatabaseUrls
from crm_kit.testing.grpc import violations
from crm_kit.testing.pii import find_personal_data
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer

# Values of this module only: the session's nats-server is shared, and other modules (the end-to-end
# erasure test) search whole databases for their own person's values.
FIRST, LAST = "Xavier", "Quill-Keep"
EMAIL, WORK_EMAIL = "xq@keep.example", "xavier.work@keep.example"
PHONE = "+8613912345678"
CJK = "保留测试"
EVIDENCE = "web form #4711 submitted from 203.0.113.9"
STREET = "Quill Lane 9"
# The erasure test's person: the same kind of data, values no other test of this module uses.
ERASED = {
    "first": "Yolanda",
    "last": "Vexillum-Erase",
    "email": "yv@erase.example",
    "work_email": "yolanda.work@erase.example",
    "phone": "+8613987654321",
    "cjk": "擦除测试人",
    "street": "Vexillum Road 7",
    "evidence": "signed paper form #8812",
}
PII = (*ERASED.values(), "13987654321")


@pytest.fixture(scope="module")
def urls(database_factory: DatabaseFactory) -> DatabaseUrls:
    return database_factory.create("customer")


@pytest.fixture(scope="module")
async def customer(urls: DatabaseUrls, nats_url: str, token_issuer: TokenIssuer) -> AsyncIterator[ServiceRuntime]:
    rt = await start_service(SPEC, urls, nats_url=nats_url, verifier=token_issuer.verifier())
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def channel(customer: ServiceRuntime) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{customer.port}") as ch:
        yield ch


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


class Calls:
    def __init__(self, channel: grpc.aio.Channel, issuer: TokenIssuer) -> None:
        self.contacts = customer_pb2_grpc.CustomerServiceStub(channel)
        self.privacy = privacy_pb2_grpc.PrivacyServiceStub(channel)
        self.timeline = timeline_pb2_grpc.TimelineServiceStub(channel)
        self.export = personal_data_pb2_grpc.PersonalDataServiceStub(channel)
        self.issuer = issuer

    def md(self, tenant_id: str, role: str = "admin", subject: str = "u-admin") -> tuple[tuple[str, str], ...]:
        return self.issuer.metadata(tenant_id, roles=(role,), subject=subject)

    async def person(self, tenant_id: str, owner: str = "", pii: dict[str, str] | None = None) -> customer_pb2.Contact:
        p = pii or {
            "first": FIRST,
            "last": LAST,
            "email": EMAIL,
            "work_email": WORK_EMAIL,
            "phone": PHONE,
            "cjk": CJK,
            "street": STREET,
        }
        contact = customer_pb2.Contact(
            first_name=p["first"],
            last_name=p["last"],
            phone=p["phone"],
            owner_id=owner,
            tags=["vip", p["cjk"]],
            job_title="Chief Tester",
            birthday="1984-02-29",
        )
        contact.emails.add(type="personal", address=p["email"], primary=True)
        contact.emails.add(type="work", address=p["work_email"])
        contact.addresses.add(type="home", street=p["street"], city="Hangzhou", country="CN")
        contact.social_accounts.add(platform="wechat", handle="zeb_quixote")
        return await self.contacts.CreateContact(
            customer_pb2.CreateContactRequest(contact=contact), metadata=self.md(tenant_id)
        )

    async def consent(
        self, tenant_id: str, contact_id: str, channel: str, status: str, md: Any = None, **kw: Any
    ) -> privacy_pb2.Consent:
        request = privacy_pb2.SetConsentRequest(
            contact_id=contact_id, channel=channel, status=status, source=kw.pop("source", "web_form"), **kw
        )
        return await self.privacy.SetConsent(request, metadata=md or self.md(tenant_id))


@pytest.fixture(scope="module")
def calls(channel: grpc.aio.Channel, token_issuer: TokenIssuer) -> Calls:
    return Calls(channel, token_issuer)


def timestamp(value: datetime) -> Any:
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


# --- consents -----------------------------------------------------------------------------------------


async def test_consent_per_channel_with_history_audit_and_event(
    calls: Calls, tenant: str, customer: ServiceRuntime
) -> None:
    c = await calls.person(tenant)
    listed = await calls.privacy.ListConsents(
        privacy_pb2.ListConsentsRequest(contact_id=c.id), metadata=calls.md(tenant)
    )
    assert [(x.channel, x.status) for x in listed.consents] == [
        ("email", "unknown"),
        ("sms", "unknown"),
        ("phone", "unknown"),
    ]
    assert list(listed.history) == []

    day_ago = datetime.now(UTC) - timedelta(days=1)
    granted = await calls.consent(tenant, c.id, "EMAIL", "granted", captured_at=timestamp(day_ago), evidence=EVIDENCE)
    assert (granted.channel, granted.status, granted.source, granted.actor) == (
        "email",
        "granted",
        "web_form",
        "u-admin",
    )
    assert granted.captured_at.ToDatetime(tzinfo=UTC) == day_ago.replace(microsecond=day_ago.microsecond)
    await calls.consent(tenant, c.id, "sms", "granted", source="sales_call")
    withdrawn = await calls.consent(tenant, c.id, "email", "withdrawn", source="unsubscribe_link")
    # Recorded later but captured earlier: history order is by capture time, and it is not current.
    await calls.consent(
        tenant, c.id, "email", "granted", source="import", captured_at=timestamp(day_ago - timedelta(days=30))
    )

    listed = await calls.privacy.ListConsents(
        privacy_pb2.ListConsentsRequest(contact_id=c.id), metadata=calls.md(tenant)
    )
    current = {x.channel: (x.status, x.source) for x in listed.consents}
    assert current == {
        "email": ("withdrawn", "unsubscribe_link"),
        "sms": ("granted", "sales_call"),
        "phone": ("unknown", ""),
    }
    assert [(h.channel, h.status, h.source) for h in listed.history] == [
        ("email", "withdrawn", "unsubscribe_link"),
        ("sms", "granted", "sales_call"),
        ("email", "granted", "web_form"),
        ("email", "granted", "import"),
    ]
    assert listed.history[0].id == withdrawn.id and listed.history[2].evidence == EVIDENCE

    with tenant_scope(tenant), system_scope():
        async with customer.db.transaction() as s:
            events = [
                json.loads(m.payload)
                for m in await s.scalars(
                    select(OutboxMessage).where(OutboxMessage.type == "crm.customer.consent.changed")
                )
                if json.loads(m.payload)["tenantid"] == tenant
            ]
            audit = list(await s.scalars(select(AuditEntry).where(AuditEntry.action == "consent")))
    assert len(events) == 4 and all(e["subject"] == c.id for e in events)
    first = next(e for e in events if e["data"]["consent"]["id"] == granted.id)
    assert first["data"]["consent"]["status"] == "granted" and first["data"]["previous_status"] == "unknown"
    assert "evidence" not in first["data"]["consent"]  # the proof stays in the customer database
    assert len(audit) == 4 and {a.entity_id for a in audit} == {c.id}


async def test_bad_consents_name_every_field(calls: Calls, tenant: str) -> None:
    c = await calls.person(tenant)
    future = timestamp(datetime.now(UTC) + timedelta(days=2))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.privacy.SetConsent(
            privacy_pb2.SetConsentRequest(
                contact_id=c.id, channel="fax", status="maybe", source="Web Form!", captured_at=future
            ),
            metadata=calls.md(tenant),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {"channel", "status", "source", "captured_at"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.privacy.SetConsent(privacy_pb2.SetConsentRequest(), metadata=calls.md(tenant))
    assert set(violations(err.value)) == {"contact_id", "channel", "status", "source"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.consent(tenant, c.id, "email", "granted", source="erasure")
    assert set(violations(err.value)) == {"source"}


async def test_more_channels_can_be_configured(calls: Calls, tenant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMER_CONSENT_CHANNELS", "wechat, WhatsApp ,bad channel")
    c = await calls.person(tenant)
    await calls.consent(tenant, c.id, "wechat", "granted")
    listed = await calls.privacy.ListConsents(
        privacy_pb2.ListConsentsRequest(contact_id=c.id), metadata=calls.md(tenant)
    )
    assert [x.channel for x in listed.consents] == ["email", "sms", "phone", "wechat", "whatsapp"]


async def test_consents_are_tenant_isolated_and_members_see_only_their_contacts(calls: Calls, tenant: str) -> None:
    mine = await calls.person(tenant, owner="aaaa-1111")
    theirs = await calls.person(tenant, owner="bbbb-2222")
    rep = calls.md(tenant, "member", "aaaa-1111")
    await calls.consent(tenant, mine.id, "sms", "granted", md=rep)
    for request, md in (
        (privacy_pb2.ListConsentsRequest(contact_id=theirs.id), rep),
        (privacy_pb2.ListConsentsRequest(contact_id=mine.id), calls.md(f"t{uuid.uuid4().hex[:12]}")),
        (privacy_pb2.ListConsentsRequest(contact_id=str(uuid.uuid4())), calls.md(tenant)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await calls.privacy.ListConsents(request, metadata=md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.consent(tenant, theirs.id, "sms", "granted", md=rep)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.consent(f"t{uuid.uuid4().hex[:12]}", mine.id, "sms", "granted")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# --- export and erasure -------------------------------------------------------------------------------


async def test_export_then_erase_leaves_no_trace_of_the_person(
    calls: Calls, tenant: str, customer: ServiceRuntime, urls: DatabaseUrls
) -> None:
    c = await calls.person(tenant, pii=ERASED)
    bystander = await calls.contacts.CreateContact(
        customer_pb2.CreateContactRequest(contact=customer_pb2.Contact(first_name="Ada", last_name="Lovelace")),
        metadata=calls.md(tenant),
    )
    await calls.consent(tenant, c.id, "email", "granted", evidence=ERASED["evidence"])
    await calls.timeline.CreateInteraction(
        timeline_pb2.CreateInteractionRequest(
            contact_id=c.id,
            interaction=timeline_pb2.Interaction(
                kind="note", subject=f"Met {ERASED['first']}", body=f"{ERASED['cjk']} prefers {ERASED['email']}"
            ),
        ),
        metadata=calls.md(tenant),
    )
    update = customer_pb2.Contact(id=c.id, lifecycle_stage="customer", last_name=ERASED["last"])
    await calls.contacts.UpdateContact(
        customer_pb2.UpdateContactRequest(contact=update, update_mask={"paths": ["lifecycle_stage"]}),
        metadata=calls.md(tenant),
    )

    # The export: every field of the contact, consents with their evidence, the timeline, the field history
    # and the audit entries about the contact.
    member = calls.md(tenant, "member", "aaaa-1111")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.export.ExportPersonalData(
            personal_data_pb2.ExportPersonalDataRequest(contact_id=c.id), metadata=member
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    other = calls.md(f"t{uuid.uuid4().hex[:12]}")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.export.ExportPersonalData(
            personal_data_pb2.ExportPersonalDataRequest(contact_id=c.id), metadata=other
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    exported = await calls.export.ExportPersonalData(
        personal_data_pb2.ExportPersonalDataRequest(contact_id=c.id), metadata=calls.md(tenant, "manager")
    )
    doc = json_format.MessageToDict(exported.data)
    assert (exported.service, exported.erased) == ("customer", False)
    assert doc["contact"]["email"] == ERASED["email"]
    assert ERASED["work_email"] in [e["address"] for e in doc["contact"]["emails"]]
    assert doc["contact"]["addresses"][0]["street"] == ERASED["street"] and ERASED["cjk"] in doc["contact"]["tags"]
    assert [x["evidence"] for x in doc["consents"]] == [ERASED["evidence"]]
    assert [i["subject"] for i in doc["interactions"]] == [f"Met {ERASED['first']}"]
    assert {h["field"] for h in doc["field_history"]} >= {"lifecycle_stage"}
    assert {a["action"] for a in doc["audit_log"]} >= {"create", "update", "consent"}

    # Erasure: members may not; another tenant's id is unknown; a manager may.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.privacy.EraseContact(privacy_pb2.EraseContactRequest(id=c.id), metadata=member)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.privacy.EraseContact(privacy_pb2.EraseContactRequest(id=c.id), metadata=other)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.privacy.EraseContact(privacy_pb2.EraseContactRequest(id="not an id!"), metadata=calls.md(tenant))
    assert set(violations(err.value)) == {"id"}
    erased = await calls.privacy.EraseContact(
        privacy_pb2.EraseContactRequest(id=c.id), metadata=calls.md(tenant, "manager", "u-boss")
    )
    assert erased.contact_id == c.id and not erased.already_erased
    again = await calls.privacy.EraseContact(privacy_pb2.EraseContactRequest(id=c.id), metadata=calls.md(tenant))
    assert again.already_erased and again.erased_at == erased.erased_at

    # The contact is gone from every ordinary path; its tombstone is exported, without personal data.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.contacts.GetContact(customer_pb2.GetContactRequest(id=c.id), metadata=calls.md(tenant))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await calls.contacts.ListContacts(customer_pb2.ListContactsRequest(), metadata=calls.md(tenant))
    assert [x.id for x in listed.contacts] == [bystander.id]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.privacy.ListConsents(privacy_pb2.ListConsentsRequest(contact_id=c.id), metadata=calls.md(tenant))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    after = await calls.export.ExportPersonalData(
        personal_data_pb2.ExportPersonalDataRequest(contact_id=c.id), metadata=calls.md(tenant)
    )
    doc = json_format.MessageToDict(after.data)
    assert after.erased and doc["contact"] is None and doc["interactions"] == [] and doc["field_history"] == []
    assert doc["erased_at"].startswith(erased.erased_at.ToDatetime().strftime("%Y-%m-%d"))
    # The fact of the erasure is kept: the consent history ends with a withdrawal by the erasure.
    assert [(x["status"], x["source"], x["evidence"]) for x in doc["consents"]][-1] == ("withdrawn", "erasure", "")
    assert any(a["action"] == "erase" for a in doc["audit_log"])
    assert not [p for p in PII if p.casefold() in json.dumps(doc, ensure_ascii=False).casefold()]

    # The outbox keeps the erasure event (the id only); the erasure event is the only one left about it.
    with tenant_scope(tenant), system_scope():
        async with customer.db.transaction() as s:
            mentions = [m for m in await s.scalars(select(OutboxMessage)) if c.id in m.payload]
            [tombstone] = list(await s.scalars(select(ErasedContact).where(ErasedContact.contact_id == c.id)))
    assert [m.type for m in mentions] == ["crm.customer.contact.erased"]
    assert json.loads(mentions[0].payload)["data"]["contact_id"] == c.id
    assert tombstone.erased_at == erased.erased_at.ToDatetime(tzinfo=UTC)

    # And nothing in any table of the customer database holds the person's data any more.
    hits = find_personal_data(urls.owner, PII)
    assert hits == [], "\n".join(map(str, hits))
    assert find_personal_data(urls.owner, ["Lovelace"]), "the scan must see data that is there"


async def test_unknown_contacts_and_bad_ids(calls: Calls, tenant: str) -> None:
    missing = str(uuid.uuid4())
    for call in (
        calls.privacy.EraseContact(privacy_pb2.EraseContactRequest(id=missing), metadata=calls.md(tenant)),
        calls.export.ExportPersonalData(
            personal_data_pb2.ExportPersonalDataRequest(contact_id=missing), metadata=calls.md(tenant)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls.export.ExportPersonalData(personal_data_pb2.ExportPersonalDataRequest(), metadata=calls.md(tenant))
    assert set(violations(err.value)) == {"contact_id"}


def test_every_customer_table_is_declared_in_the_privacy_registry() -> None:
    """A new table must say what erasure does to it (crm_customer.privacy.PERSONAL_DATA)."""
    assert undeclared_tables(Base.metadata, PERSONAL_DATA) == []
    assert SPEC.personal_data is PERSONAL_DATA
