"""Privacy in the customer service: consent per channel, what the service holds about a person, and the
erasure of a person.

Consents: every change appends a row (channel, status, source, captured_at, actor, evidence); the current
consent of a channel is its latest row by `captured_at`. Channels are email, sms and phone, plus any named
in CUSTOMER_CONSENT_CHANNELS (comma separated).

Erasure (`erase_contact`, admins and managers) runs in one transaction: the contact's timeline entries and
field history are deleted, its consents lose their evidence and get a final `withdrawn` row from source
`erasure` (the fact of the erasure is kept), the contact row is deleted (mapper events and triggers drop its
tags, custom field and full-text index rows with it), every audit entry about it is blanked, the outbox
and dead-letter rows carrying its data are scrubbed, the tombstone (`erased_contacts`: id and time) is
recorded, and `crm.customer.contact.erased` is emitted with the contact id only. Every service then erases
what it holds (`crm_kit.privacy`). The contact row is deleted rather than blanked in place so that every
other path (get, list, search, duplicates, import, merge) simply no longer finds it; the tombstone is what
remains.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Index, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from crm.customer.v1 import privacy_pb2
from crm_customer import timeline
from crm_customer.history import ContactFieldChange
from crm_customer.models import Base, Contact
from crm_customer.transfer.jobs import ImportJob, ImportProblem
from crm_kit import audit, validation
from crm_kit.access import visible_to
from crm_kit.context import current_principal
from crm_kit.db import TenantScoped, utcnow, uuid7
from crm_kit.db.base import UtcDateTime
from crm_kit.errors import NotFound, PermissionDenied, Violations
from crm_kit.events.outbox import record_event
from crm_kit.privacy import Custom, Holding, Mentions, PersonalData, erased_at
from crm_kit.protos import to_dict, to_message

CHANNELS_ENV = "CUSTOMER_CONSENT_CHANNELS"
BASE_CHANNELS = ("email", "sms", "phone")
GRANTED, WITHDRAWN, UNKNOWN = "granted", "withdrawn", "unknown"
STATUSES = (GRANTED, WITHDRAWN, UNKNOWN)
ERASURE_SOURCE = "erasure"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
SOURCE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_EVIDENCE = 2000
FUTURE_LIMIT = timedelta(minutes=5)  # clock skew between the caller and us
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
SOURCE_NAME = "crm.customer"
CONSENT_CHANGED = "crm.customer.consent.changed"
CONTACT_ERASED = "crm.customer.contact.erased"


class Consent(Base, TenantScoped):
    """One change of a contact's consent on one channel (append-only history)."""

    __tablename__ = "consents"
    __table_args__ = (
        Index(
            "ix_consents_tenant_id_contact_id_channel_captured_at", "tenant_id", "contact_id", "channel", "captured_at"
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=uuid7)  # time ordered
    contact_id: Mapped[str] = mapped_column(String(36), nullable=False)
    channel: Mapped[str] = mapped_column(String(32), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    source: Mapped[str] = mapped_column(String(64), nullable=False)
    captured_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    actor: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    evidence: Mapped[str] = mapped_column(Text, nullable=False, default="")
    record_time: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, default=utcnow)


# --- what the customer service holds about a person ---------------------------------------------------


async def _merge_export(session: AsyncSession, contact_id: str) -> Any:
    from crm_customer import merge

    return await merge.export_person(session, contact_id)


async def _merge_erase(session: AsyncSession, contact_id: str) -> Any:
    from crm_customer import merge

    return await merge.erase_person(session, contact_id)


PERSONAL_DATA = PersonalData(
    "customer",
    [
        Custom(
            "interactions",
            export=timeline.contact_entries,
            erase=timeline.erase_contact,
            tables=(timeline.Interaction.__tablename__,),
        ),
        # Merges (the duplicate's snapshot) and dedupe pairs (matched emails and phones) the contact is in;
        # its match keys go with the contact row (mapper events, crm_customer.dedupe).
        Custom(
            "merges",
            export=_merge_export,
            erase=_merge_erase,
            tables=("contact_merges", "duplicate_pairs", "contact_match_keys"),
        ),
        Holding(Consent, "consents", anonymise={"evidence": ""}),
        Holding(ContactFieldChange, "field_history"),
        # Last: the contact row itself (mapper events drop its custom field index with it).
        Holding(
            Contact,
            "contact",
            link="id",
            single=True,
            required=True,
            pii=("first_name", "last_name", "email", "phone", "emails", "phones"),
            audit_entity="contact",
        ),
        # Other contacts' timeline entries quoting the person (by email, phone or full name).
        Mentions(timeline.Interaction, "interaction_mentions", ("subject", "body", "details"), link="contact_id"),
        # Import reports quote the cells of the rows they could not take.
        Mentions(ImportProblem, "import_problems", ("value", "problem")),
        Mentions(ImportJob, "import_jobs", ("filename", "error")),
    ],
    without_personal_data={
        "accounts": "companies; people are contacts",
        "contact_tags": "index of contacts.tags, deleted with the contact by mapper events",
        "customer_settings": "tenant settings",
        "dedupe_jobs": "job status and counts",
        "custom_field_definitions": "field definitions, no values",
        "custom_field_values": "index of contacts.custom_fields, deleted with the contact by mapper events",
    },
)


# --- consents -----------------------------------------------------------------------------------------


def channels() -> tuple[str, ...]:
    """email, sms and phone, then the valid names in CUSTOMER_CONSENT_CHANNELS."""
    extra = [c.strip().lower() for c in os.environ.get(CHANNELS_ENV, "").split(",")]
    return tuple(dict.fromkeys([*BASE_CHANNELS, *(c for c in extra if NAME.match(c))]))


@dataclass(frozen=True)
class ConsentChange:
    contact_id: str
    channel: str
    status: str
    source: str
    captured_at: datetime
    evidence: str


def consent_change(request: privacy_pb2.SetConsentRequest, now: datetime | None = None) -> ConsentChange:
    """Validate a SetConsent request, naming every bad field at once."""
    now = now or utcnow()
    v = Violations()
    contact_id = validation.reference(v, "contact_id", request.contact_id, required=True)
    known = channels()
    channel = request.channel.strip().lower()
    if not channel:
        v.add("channel", f"is required: one of {', '.join(known)}")
    elif channel not in known:
        v.add("channel", f"must be one of: {', '.join(known)}")
    status = request.status.strip().lower()
    if not status:
        v.add("status", f"is required: one of {', '.join(STATUSES)}")
    elif status not in STATUSES:
        v.add("status", f"must be one of: {', '.join(STATUSES)}")
    source = request.source.strip().lower()
    if not source:
        v.add("source", "is required: where the consent was captured, e.g. web_form, import or sales_call")
    elif not SOURCE.match(source):
        v.add("source", "must be a lower-case word of letters, digits and _ such as web_form")
    elif source == ERASURE_SOURCE:
        v.add("source", f"{ERASURE_SOURCE!r} is recorded by the erasure itself")
    captured_at = now
    if request.HasField("captured_at"):
        try:
            captured_at = request.captured_at.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError, OSError):
            v.add("captured_at", "is not a valid time")
        else:
            if captured_at > now + FUTURE_LIMIT:
                v.add("captured_at", "must not be in the future")
            elif captured_at < EARLIEST:
                v.add("captured_at", "must be after 1900-01-01")
    evidence = request.evidence.strip()
    if len(evidence) > MAX_EVIDENCE:
        v.add("evidence", f"must be at most {MAX_EVIDENCE} characters")
    v.raise_if_any()
    return ConsentChange(contact_id, channel, status, source, captured_at, evidence)


def consent_message(row: Consent) -> privacy_pb2.Consent:
    return to_message(row, privacy_pb2.Consent)


async def visible_contact(session: AsyncSession, contact_id: str) -> Contact:
    """The contact, if the caller may see it (members: only the contacts they own); NOT_FOUND otherwise,
    as for an unknown or erased id."""
    stmt = select(Contact).where(Contact.id == contact_id, visible_to(current_principal(), Contact))
    contact = (await session.execute(stmt)).scalar_one_or_none()
    if contact is None:
        raise NotFound("contact", contact_id)
    return contact


async def history(session: AsyncSession, contact_id: str) -> list[Consent]:
    """Every change, newest first (by captured_at, then by when it was recorded)."""
    stmt = (
        select(Consent).where(Consent.contact_id == contact_id).order_by(Consent.captured_at.desc(), Consent.id.desc())
    )
    return list((await session.execute(stmt)).scalars())


def current(rows: list[Consent], contact_id: str) -> list[privacy_pb2.Consent]:
    """The current consent of every channel (the newest change; "unknown" if none), channels in order."""
    latest: dict[str, Consent] = {}
    for row in rows:  # newest first
        latest.setdefault(row.channel, row)
    known = channels()
    order = [*known, *sorted(set(latest) - set(known))]  # channels no longer configured still show
    unknown = {ch: privacy_pb2.Consent(contact_id=contact_id, channel=ch, status=UNKNOWN) for ch in order}
    return [consent_message(latest[ch]) if ch in latest else unknown[ch] for ch in order]


async def set_consent(session: AsyncSession, change: ConsentChange) -> Consent:
    """Append the change, audit it and emit crm.customer.consent.changed (in the caller's transaction)."""
    await visible_contact(session, change.contact_id)
    previous = next((r for r in await history(session, change.contact_id) if r.channel == change.channel), None)
    principal = current_principal()
    row = Consent(
        id=uuid7(),
        contact_id=change.contact_id,
        channel=change.channel,
        status=change.status,
        source=change.source,
        captured_at=change.captured_at,
        actor=principal.subject if principal is not None else "",
        evidence=change.evidence,
        record_time=utcnow(),
    )
    session.add(row)
    await session.flush()
    before = {"channel": change.channel, "status": previous.status if previous is not None else UNKNOWN}
    after = {"channel": change.channel, "status": change.status, "source": change.source}
    await audit.record_audit(
        session, action="consent", entity="contact", entity_id=change.contact_id, before=before, after=after
    )
    message = to_dict(consent_message(row))
    message.pop("evidence", None)  # proof stays in the customer database, not in every event consumer
    await record_event(
        session,
        source=SOURCE_NAME,
        type=CONSENT_CHANGED,
        subject=change.contact_id,
        data={"consent": message, "previous_status": before["status"]},
    )
    return row


# --- erasure ------------------------------------------------------------------------------------------


def require_privacy_officer() -> None:
    principal = current_principal()
    if principal is not None and not principal.sees_everything:
        raise PermissionDenied("erasing a person needs the admin or manager role")


@dataclass(frozen=True)
class Erased:
    erased_at: datetime
    already: bool  # erased before this call: nothing was done again
    # The person's identifying values, in memory only, for purging the stream of events quoting them.
    terms: frozenset[str] = frozenset()


async def erase_contact(session: AsyncSession, contact_id: str) -> Erased:
    """Erase the contact (see the module docstring)."""
    previous = await erased_at(session, contact_id)
    if previous is not None:
        return Erased(previous, True)
    if await session.get(Contact, contact_id) is None:  # the tenant guard: another tenant's id is unknown
        raise NotFound("contact", contact_id)
    now = utcnow()
    principal = current_principal()
    for channel in sorted({r.channel for r in await history(session, contact_id)}):
        session.add(
            Consent(
                id=uuid7(),
                contact_id=contact_id,
                channel=channel,
                status=WITHDRAWN,
                source=ERASURE_SOURCE,
                captured_at=now,
                actor=principal.subject if principal is not None else "",
                evidence="",
                record_time=now,
            )
        )
    await session.flush()
    from crm_customer import merge

    # Contacts merged into this one were the same person: their ids live on in audit entries and in the
    # other services' references (before the merge records go, with the person's data in them).
    absorbed = [i for i in await merge.absorbed(session, contact_id) if await erased_at(session, i) is None]
    report = await PERSONAL_DATA.erase(session, contact_id, when=now)
    terms = set(report.terms)
    stamp: Any = audit.jsonable(report.erased_at)
    for duplicate_id in absorbed:
        terms |= set((await PERSONAL_DATA.erase(session, duplicate_id, when=now)).terms)
        await audit.redact_audit(session, entity="contact", entity_id=duplicate_id)
    for erased_id in [contact_id, *absorbed]:
        await audit.record_audit(
            session, action="erase", entity="contact", entity_id=erased_id, after={"erased_at": stamp}
        )
        data: dict[str, Any] = {"contact_id": erased_id, "erased_at": stamp}
        if erased_id != contact_id:
            data["merged_into"] = contact_id
        await record_event(session, source=SOURCE_NAME, type=CONTACT_ERASED, subject=erased_id, data=data)
    return Erased(report.erased_at, False, frozenset(terms))
