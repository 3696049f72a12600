"""The right to be forgotten, end to end (SQLite and PostgreSQL): a person with distinctive personal data
is recorded across the platform (contact, consents, a note, an opportunity, a ticket naming them), exported
through REST, erased through REST; then every table of every service database and of the gateway database,
and every event of the tenant still in the JetStream stream, is searched for their data: nothing is left.
A replayed event carrying their old data does not bring them back."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from crm_kit.db.base import utcnow
from crm_kit.db.ids import uuid7
from crm_kit.events.bus import EventBus
from crm_kit.events.envelope import Event
from crm_kit.events.stream import DEFAULT_STREAM
from crm_kit.testing.pii import find_personal_data
from tests.platform_harness import SPECS, Platform, Tenant, eventually

FIRST, LAST = "Zebulon", "Quixote-Erase"
EMAIL = "zq@erase.example"
PHONE = "+86 139 1234 5678"
CJK = "测试擦除"
STREET = "Quixote Lane 9"
HANDLE = "zebulon_qx_wechat"
EVIDENCE = "double opt-in mail to zq@erase.example"
PII = (FIRST, LAST, EMAIL, "13912345678", CJK, STREET, HANDLE)


@pytest.fixture(scope="module")
def member(platform: Platform, tenant_a: Tenant) -> Tenant:
    """A sales rep (member) of tenant A."""
    email = f"rep-{uuid.uuid4().hex[:6]}@acme.example.com"
    with platform.http(tenant_a) as api:
        r = api.post("/api/v1/users", json={"email": email, "password": "correct-horse-42", "roles": ["member"]})
        assert r.status_code == 201, r.text
    rep = Tenant(slug=tenant_a.slug, email=email)
    platform.login(rep)
    return rep


def record_the_person(api: httpx.Client) -> dict[str, Any]:
    contact = api.post(
        "/api/v1/contacts",
        json={
            "first_name": FIRST,
            "last_name": LAST,
            "emails": [{"type": "personal", "address": EMAIL, "primary": True}],
            "phone": PHONE,
            "tags": ["vip", CJK],
            "job_title": "Chief Quixote",
            "birthday": "1984-02-29",
            "addresses": [{"type": "home", "street": STREET, "city": "杭州", "country": "CN"}],
            "social_accounts": [{"platform": "wechat", "handle": HANDLE}],
        },
    )
    assert contact.status_code == 201, contact.text
    c = contact.json()
    cid = c["id"]
    r = api.put(
        f"/api/v1/contacts/{cid}/consents/email", json={"status": "granted", "source": "web_form", "evidence": EVIDENCE}
    )
    assert r.status_code == 200, r.text
    r = api.post(
        f"/api/v1/contacts/{cid}/consents", json={"channel": "sms", "status": "withdrawn", "source": "sales_call"}
    )
    assert r.status_code == 201, r.text
    r = api.post(
        f"/api/v1/contacts/{cid}/interactions",
        json={"kind": "note", "subject": f"Lunch with {FIRST}", "body": f"{CJK} prefers {EMAIL}"},
    )
    assert r.status_code == 201, r.text
    opp = api.post(
        "/api/v1/opportunities", json={"contact_id": cid, "name": "Windmill deal", "amount": "9000", "currency": "EUR"}
    )
    assert opp.status_code == 201, opp.text
    ticket = api.post(
        "/api/v1/tickets",
        json={
            "contact_id": cid,
            "subject": f"{FIRST} cannot log in",
            "description": f"客户 {CJK} ({EMAIL}, {PHONE}) reports the login fails.",
            "priority": "high",
            "channel": "email",
        },
    )
    assert ticket.status_code == 201, ticket.text
    return {"contact": c, "opportunity": opp.json(), "ticket": ticket.json()}


def export(api: httpx.Client, cid: str) -> httpx.Response:
    return api.get(f"/api/v1/contacts/{cid}/export")


def database_urls(platform: Platform) -> dict[str, str]:
    urls = {name: rt.settings.migration_database_url for name, rt in platform.runtimes.items()}
    urls["gateway"] = platform.gateway_env["GATEWAY_DATABASE_URL"]
    return urls


def scan(platform: Platform, needles: tuple[str, ...]) -> list[str]:
    return [f"{db}: {hit}" for db, url in database_urls(platform).items() for hit in find_personal_data(url, needles)]


async def tenant_events(nats_url: str, tenant_id: str) -> list[bytes]:
    """Every event of the tenant still in the stream."""
    bus = await EventBus.connect([nats_url], name="privacy-e2e-reader")
    name = f"privacy-e2e-{uuid.uuid4().hex[:8]}"
    try:
        js = bus.js
        config = ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.ALL,
            filter_subject=f"crm.events.{tenant_id}.>",
            mem_storage=True,
            inactive_threshold=60.0,
        )
        await js.add_consumer(DEFAULT_STREAM, config)
        psub = await js.pull_subscribe_bind(consumer=name, stream=DEFAULT_STREAM)
        found: list[bytes] = []
        while (await psub.consumer_info()).num_pending:
            messages = await psub.fetch(256, timeout=2)
            found.extend(bytes(m.data) for m in messages)
            await messages[-1].ack()
        await psub.unsubscribe()
        await js.delete_consumer(DEFAULT_STREAM, name)
        return found
    finally:
        await bus.close()


async def replay_old_contact_event(nats_url: str, tenant_id: str, contact: dict[str, Any]) -> None:
    """A `contact.updated` carrying the person's old data, as a replay or a late redelivery would bring."""
    event = Event(
        id=uuid7(),
        source="crm.customer",
        type="crm.customer.contact.updated",
        subject=contact["id"],
        time=utcnow(),
        tenant_id=tenant_id,
        data={"contact": {**contact, "version": 99}, "changed": ["first_name"]},
    )
    bus = await EventBus.connect([nats_url], name="privacy-e2e-replay")
    try:
        await bus.js.publish(event.nats_subject, event.to_json(), headers={"Nats-Msg-Id": event.id})
    finally:
        await bus.close()


def test_every_service_answers_the_export_and_runs_the_erasure_consumer() -> None:
    assert {s.name for s in SPECS if s.personal_data is not None} == {s.name for s in SPECS}


def test_the_privacy_routes_are_documented(platform: Platform, tenant_a: Tenant) -> None:
    with platform.http(tenant_a) as api:
        paths = api.get("/api/v1/openapi.json").json()["paths"]
    assert paths["/api/v1/contacts/{id}/export"]["get"]["operationId"] == "exportContactPersonalData"
    assert "post" in paths["/api/v1/contacts/{id}/erase"]
    assert {"get", "post"} <= set(paths["/api/v1/contacts/{contact_id}/consents"])
    assert "put" in paths["/api/v1/contacts/{contact_id}/consents/{channel}"]


def test_export_then_erase_leaves_no_trace_anywhere(
    platform: Platform, tenant_a: Tenant, tenant_b: Tenant, member: Tenant
) -> None:
    with platform.http(tenant_a) as api, platform.http(tenant_b) as other, platform.http(member) as rep:
        bystander = api.post(
            "/api/v1/contacts", json={"first_name": "Ada", "last_name": "Lovelace", "email": "ada@analytical.example"}
        )
        assert bystander.status_code == 201, bystander.text
        ada = bystander.json()["id"]
        assert (
            api.post(
                "/api/v1/opportunities", json={"contact_id": ada, "name": "Engine", "amount": "1", "currency": "GBP"}
            ).status_code
            == 201
        )
        made = record_the_person(api)
        cid = made["contact"]["id"]
        # Someone else's records quoting the person in free text: a note (by email) and a ticket (by name).
        ada_note = api.post(
            f"/api/v1/contacts/{ada}/interactions", json={"kind": "note", "body": f"Ada was introduced by {EMAIL}"}
        )
        assert ada_note.status_code == 201, ada_note.text
        ada_ticket = api.post(
            "/api/v1/tickets",
            json={
                "contact_id": ada,
                "subject": "Referral",
                "description": f"Ada says {FIRST} {LAST} referred her",
                "priority": "low",
                "channel": "phone",
            },
        )
        assert ada_ticket.status_code == 201, ada_ticket.text

        # Every service has learned what it keeps about the person before the erasure.
        # The opportunity's contact_name is copied when it is created, so it says nothing about the
        # projections: wait for each service's own copy of the person (sales', servicedesk's and analytics'
        # from contact.created; servicedesk finds mentions by the names it holds), and for the timeline's
        # entries from the other services' events.
        def learned() -> bool:
            kinds = {e["kind"] for e in api.get(f"/api/v1/contacts/{cid}/timeline").json()["items"]}
            held = export(api, cid).json()
            return (
                {"note", "opportunity", "ticket"} <= kinds
                and held["sales"].get("contact_ref") is not None
                and held["servicedesk"].get("contact_ref") is not None
                and held["analytics"].get("contact_view") is not None
            )

        eventually(learned, timeout=30)

        # The export: one document keyed by service.
        r = export(api, cid)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["contact_id"] == cid and doc["erased"] is False and doc["erasure_pending"] == []
        assert doc["customer"]["contact"]["email"] == EMAIL and CJK in doc["customer"]["contact"]["tags"]
        assert {(c["channel"], c["status"]) for c in doc["customer"]["consents"]} == {
            ("email", "granted"),
            ("sms", "withdrawn"),
        }
        assert EVIDENCE in [c["evidence"] for c in doc["customer"]["consents"]]
        assert {i["kind"] for i in doc["customer"]["interactions"]} >= {"note", "opportunity", "ticket"}
        assert any(a["action"] == "consent" for a in doc["customer"]["audit_log"])
        assert [o["contact_name"] for o in doc["sales"]["opportunities"]] == [f"{FIRST} {LAST}"]
        assert doc["sales"]["contact_ref"]["display_name"] == f"{FIRST} {LAST}"
        assert CJK in doc["servicedesk"]["tickets"][0]["description"]
        assert doc["analytics"]["contact_view"]["id"] == cid
        assert [t["id"] for t in doc["servicedesk"]["ticket_mentions"]] == [ada_ticket.json()["id"]]
        assert [i["id"] for i in doc["customer"]["interaction_mentions"]] == [ada_note.json()["id"]]
        assert doc["marketing"] == {}
        assert doc["sales"]["opportunities"][0]["version"] == 1  # whole numbers stay integers
        assert "Lovelace" not in json.dumps(doc)

        # Another tenant cannot export or erase the person; a sales rep may do neither.
        assert export(other, cid).status_code == 404
        assert other.post(f"/api/v1/contacts/{cid}/erase").status_code == 404
        assert export(rep, cid).status_code == 403
        denied = rep.post(f"/api/v1/contacts/{cid}/erase")
        assert denied.status_code == 403 and denied.headers["content-type"].startswith("application/problem+json")
        assert export(api, str(uuid.uuid4())).status_code == 404
        bad = api.put(f"/api/v1/contacts/{cid}/consents/fax", json={"status": "maybe", "source": "web_form"})
        assert bad.status_code == 400 and {e["field"] for e in bad.json()["errors"]} == {"channel", "status"}

        # The erasure.
        started = time.monotonic()
        erased = api.post(f"/api/v1/contacts/{cid}/erase")
        answered = time.monotonic() - started
        assert erased.status_code == 200, erased.text
        assert erased.json()["contact_id"] == cid and erased.json()["already_erased"] is False
        again = api.post(f"/api/v1/contacts/{cid}/erase", json={})
        assert again.status_code == 200 and again.json()["already_erased"] is True
        assert api.get(f"/api/v1/contacts/{cid}").status_code == 404

        def done() -> dict[str, Any] | None:
            r = export(api, cid)
            body = r.json() if r.status_code == 200 else None
            return body if body is not None and body["erased"] and body["erasure_pending"] == [] else None

        after = eventually(done, timeout=60)
        everywhere = time.monotonic() - started
        print(f"\nerasure: REST answer {answered * 1000:.0f} ms, every service done in {everywhere * 1000:.0f} ms")
        assert after["customer"]["contact"] is None and after["customer"]["interactions"] == []
        assert after["customer"]["consents"][-1]["source"] == "erasure"
        assert [o["contact_name"] for o in after["sales"]["opportunities"]] == [""]
        assert after["sales"]["contact_ref"] is None and after["servicedesk"]["contact_ref"] is None
        assert [(t["subject"], t["description"]) for t in after["servicedesk"]["tickets"]] == [("[erased]", "")]
        assert after["analytics"]["contact_view"] is None
        assert not [p for p in PII if p.casefold() in json.dumps(after, ensure_ascii=False).casefold()]
        # The other people's records stay, without the quotes.
        ada_after = api.get(f"/api/v1/tickets/{ada_ticket.json()['id']}").json()
        assert ada_after["description"] == "Ada says [erased] referred her" and ada_after["contact_id"] == ada
        note_after = api.get(f"/api/v1/interactions/{ada_note.json()['id']}").json()
        assert note_after["body"] == "Ada was introduced by [erased]"
        # Nothing new can be linked to the erased person.
        relinked = api.post(
            "/api/v1/opportunities", json={"contact_id": cid, "name": "X", "amount": "1", "currency": "EUR"}
        )
        assert relinked.status_code == 400 and [e["field"] for e in relinked.json()["errors"]] == ["contact_id"]
        # The opportunity and the ticket themselves stay (business records), linked to the tombstone id.
        assert api.get(f"/api/v1/opportunities/{made['opportunity']['id']}").json()["amount"] == "9000.00"

    # No table of any database, and no event of the tenant in the stream, holds the person's data.
    hits = scan(platform, PII)
    assert hits == [], "\n".join(hits)
    assert scan(platform, ("Lovelace",)), "the scan must see data that is there"

    def stream_is_clean() -> list[bytes] | None:
        events = platform.loop.run(tenant_events(platform.nats_url, tenant_a.tenant_id))
        leaking = [e for e in events if any(p.encode() in e for p in PII)]
        return events if events and not leaking else None

    events = eventually(stream_is_clean, timeout=30)
    assert any(b"crm.customer.contact.erased" in e for e in events)

    # A replay of an old event carrying the person's data changes nothing: every projection knows the id
    # was erased. A later contact (through the same consumers) proves the replay was processed.
    platform.loop.run(replay_old_contact_event(platform.nats_url, tenant_a.tenant_id, made["contact"]))
    with platform.http(tenant_a) as api:
        marker = api.post("/api/v1/contacts", json={"first_name": "Marker", "last_name": "After-Replay"}).json()["id"]
        opp = api.post(
            "/api/v1/opportunities", json={"contact_id": marker, "name": "M", "amount": "1", "currency": "EUR"}
        )
        assert opp.status_code == 201, opp.text
        eventually(
            lambda: (
                api.get(f"/api/v1/opportunities/{opp.json()['id']}").json()["contact_name"] == "Marker After-Replay"
            ),
            timeout=30,
        )
        # Ada and the marker: the erased person is not counted, before or after the replay.
        eventually(lambda: api.get("/api/v1/analytics/summary").json()["contact_count"] == 2, timeout=30)
        platform.loop.run(asyncio.sleep(0.5))
        final = export(api, cid).json()
        assert final["sales"]["contact_ref"] is None and final["analytics"]["contact_view"] is None
    hits = [h for h in scan(platform, PII)]
    assert hits == [], "\n".join(hits)


def test_erasing_a_contact_erases_the_duplicates_merged_into_it(platform: Platform, tenant_a: Tenant) -> None:
    """A duplicate merged away was the same person: its id lives on in audit entries and in the other
    services' references (an opportunity named it before the merge), and must not keep their name."""
    first, last, email = "Ottoline", "Merged-Erase", "om@merged-erase.example"
    with platform.http(tenant_a) as api:
        survivor = api.post("/api/v1/contacts", json={"first_name": first, "last_name": last}).json()
        duplicate = api.post(
            "/api/v1/contacts", json={"first_name": first, "last_name": last, "email": email}
        ).json()
        opp = api.post(
            "/api/v1/opportunities",
            json={"name": "Deal", "contact_id": duplicate["id"], "amount": "100"},
        )
        assert opp.status_code == 201, opp.text
        r = api.post(f"/api/v1/contacts/{survivor['id']}/merge", json={"duplicate_id": duplicate["id"]})
        assert r.status_code == 200, r.text
        r = api.post(f"/api/v1/contacts/{survivor['id']}/erase", json={})
        assert r.status_code == 200, r.text
    eventually(lambda: not scan(platform, (last, email)), timeout=60)
