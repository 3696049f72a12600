"""The interaction timeline (360° view) of a contact.

Two kinds of entries share one table:
- recorded here by users: calls, emails, meetings and notes (source "customer"), editable;
- learned from the other services' events (source = the producing context): any event whose resource
  payload `data[<entity>]` carries a non-empty `contact_id` becomes one read-only entry of kind `<entity>`
  (`campaign_response` for `*.responded` events), summarised by the kind's own function when there is one.

An entry learned from an event gets an id derived from the tenant and the event id (a UUIDv7 carrying the
event's time), so replaying the stream can never add it twice, on top of the consumer inbox. Entries for a
contact id this tenant does not know (yet) are kept, and only ever read through the tenant-scoped timeline.

The dedupe engineer's merge uses `repoint_contact` and `restore`; privacy uses `contact_entries` and
`erase_contact`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format
from sqlalchemy import JSON, ColumnElement, Index, Integer, String, Text, select, tuple_, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from crm.customer.v1 import timeline_pb2
from crm_customer.models import Base, Contact
from crm_kit import audit, pagination, validation
from crm_kit.access import visible_to
from crm_kit.context import current_principal
from crm_kit.db import Resource, utcnow
from crm_kit.db.base import UtcDateTime
from crm_kit.errors import InvalidArgument, NotFound, Violations
from crm_kit.events.envelope import Event, InvalidSubject, parse_type, subject_filter
from crm_kit.privacy import is_erased
from crm_kit.protos import to_message
from crm_kit.runtime import Subscription

log = logging.getLogger(__name__)

RECORDED_KINDS = ("call", "email", "meeting", "note")
EVENT_KINDS = ("opportunity", "order", "ticket", "complaint", "campaign_response")
KNOWN_KINDS = RECORDED_KINDS + EVENT_KINDS
RECORDED_SOURCE = "customer"
DIRECTIONS = ("inbound", "outbound")
WITH_DIRECTION = ("call", "email")
WITH_DURATION = ("call", "meeting")
MAX_DURATION = 86_400
MAX_SUBJECT = 255
MAX_BODY = 10_000
MAX_DETAILS_BYTES = 4096
FUTURE_LIMIT = timedelta(days=1)
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
MUTABLE_FIELDS = (
    "kind",
    "occurred_at",
    "subject",
    "body",
    "direction",
    "duration_seconds",
    "owner_id",
    "reference_type",
    "reference_id",
    "details",
)
CONSUMER = "customer-timeline"
ENTITY = "interaction"  # events crm.customer.interaction.*, audit entity
SUBJECTS = [subject_filter("sales"), subject_filter("servicedesk"), subject_filter("marketing")]
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


class Interaction(Base, Resource):
    __tablename__ = "interactions"
    __table_args__ = (
        Index("ix_interactions_tenant_id_contact_id_occurred_at_id", "tenant_id", "contact_id", "occurred_at", "id"),
        Index("ix_interactions_tenant_id_kind", "tenant_id", "kind"),
    )

    contact_id: Mapped[str] = mapped_column(String(36), nullable=False)
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    subject: Mapped[str] = mapped_column(String(MAX_SUBJECT), nullable=False, default="")
    body: Mapped[str] = mapped_column(Text, nullable=False, default="")
    direction: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    duration_seconds: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    owner_id: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    source: Mapped[str] = mapped_column(String(64), nullable=False, default=RECORDED_SOURCE)
    reference_type: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    reference_id: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    event_id: Mapped[str] = mapped_column(String(64), nullable=False, default="")  # "" when recorded here

    @property
    def read_only(self) -> bool:
        return self.source != RECORDED_SOURCE


def interaction_message(row: Interaction) -> timeline_pb2.Interaction:
    message = to_message(row, timeline_pb2.Interaction, details=None)
    message.details.SetInParent()  # always present: REST shows {} rather than leaving the key out
    if row.details:
        message.details.update(row.details)
    return message


# --- recorded interactions: validation ----------------------------------------------------------------


def _timestamp(v: Violations, field: str, message: timeline_pb2.Interaction, now: datetime) -> datetime | None:
    try:
        value = message.occurred_at.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        v.add(field, "is not a valid time")
        return None
    if value < EARLIEST:
        v.add(field, "must be after 1900-01-01")
    elif value > now + FUTURE_LIMIT:
        v.add(field, "must not be more than a day in the future")
    return value


def _details(v: Violations, field: str, message: timeline_pb2.Interaction) -> dict[str, Any]:
    details: dict[str, Any] = json_format.MessageToDict(message.details)
    size = len(json.dumps(details, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_DETAILS_BYTES:
        v.add(field, f"must be at most {MAX_DETAILS_BYTES} bytes of JSON (got {size})")
    return details


def _name(v: Violations, field: str, value: str) -> str:
    value = value.strip().lower()
    if value and (len(value) > 64 or not set(value) <= NAME_CHARS or not value[0].isalpha()):
        v.add(field, "must be a lower-case name such as opportunity")
    return value


def recorded_values(
    message: timeline_pb2.Interaction, *, owner: str, now: datetime, v: Violations | None = None
) -> dict[str, Any]:
    """Validate and normalise every user-settable field of a recorded interaction (all at once, so every
    problem is named). `occurred_at` defaults to `now` when unset; `owner_id` to `owner`."""
    v = v if v is not None else Violations()
    out: dict[str, Any] = {}
    kind = message.kind.strip().lower()
    if not kind:
        v.add("kind", f"is required: one of {', '.join(RECORDED_KINDS)}")
    elif kind not in RECORDED_KINDS:
        v.add("kind", f"must be one of: {', '.join(RECORDED_KINDS)} (other kinds come from events)")
    out["kind"] = kind
    out["occurred_at"] = _timestamp(v, "occurred_at", message, now) if message.HasField("occurred_at") else now
    out["subject"] = validation.text(v, "subject", message.subject.replace("\n", " "), max_length=MAX_SUBJECT)
    body = message.body.strip()
    if len(body) > MAX_BODY:
        v.add("body", f"must be at most {MAX_BODY} characters")
    elif kind == "note" and not body:
        v.add("body", "is required for a note")
    out["body"] = body
    direction = message.direction.strip().lower()
    if kind in WITH_DIRECTION:
        direction = validation.one_of(v, "direction", direction, DIRECTIONS)
    elif direction and kind in RECORDED_KINDS:
        v.add("direction", f"only {' and '.join(k + 's' for k in WITH_DIRECTION)} have a direction")
    out["direction"] = direction
    duration = message.duration_seconds
    if duration < 0 or duration > MAX_DURATION:
        v.add("duration_seconds", f"must be between 0 and {MAX_DURATION}")
    elif duration and kind not in WITH_DURATION and kind in RECORDED_KINDS:
        v.add("duration_seconds", f"only {' and '.join(k + 's' for k in WITH_DURATION)} have a duration")
    out["duration_seconds"] = duration
    out["owner_id"] = validation.reference(v, "owner_id", message.owner_id) or owner
    out["reference_type"] = _name(v, "reference_type", message.reference_type)
    out["reference_id"] = validation.reference(v, "reference_id", message.reference_id)
    if bool(out["reference_type"]) != bool(out["reference_id"]):
        missing = "reference_id" if out["reference_type"] else "reference_type"
        v.add(missing, "reference_type and reference_id go together")
    out["details"] = _details(v, "details", message)
    v.raise_if_any()
    return out


def merged_message(
    row: Interaction, change: timeline_pb2.Interaction, paths: Sequence[str]
) -> timeline_pb2.Interaction:
    """The stored entry with the masked fields of `change` applied, for validating the result as a whole."""
    merged = interaction_message(row)
    for path in paths:
        field = timeline_pb2.Interaction.DESCRIPTOR.fields_by_name[path]
        if field.message_type is not None:
            merged.ClearField(path)  # type: ignore[arg-type]
            if change.HasField(path):  # type: ignore[arg-type]
                getattr(merged, path).CopyFrom(getattr(change, path))
        else:
            setattr(merged, path, getattr(change, path))
    return merged


# --- reading ------------------------------------------------------------------------------------------


async def require_contact(session: AsyncSession, contact_id: str) -> Contact:
    """The contact, if it is this tenant's (the tenant guard filters the query) and the caller may see it
    (members: only the contacts they own, `crm_kit.access`); NOT_FOUND otherwise."""
    stmt = select(Contact).where(Contact.id == contact_id, visible_to(current_principal(), Contact))
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise NotFound("contact", contact_id)
    return row


def parse_time(v: Violations, field: str, value: str) -> datetime | None:
    """An RFC 3339 time (a plain date means midnight UTC), or None when empty."""
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        v.add(field, "must be an RFC 3339 time such as 2025-01-31T09:00:00Z")
        return None
    if parsed.tzinfo is None:
        if "T" in value or " " in value:
            v.add(field, "needs a UTC offset, such as Z or +08:00")
            return None
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


async def unknown_kinds(session: AsyncSession, kinds: Sequence[str]) -> list[str]:
    """Kinds that are neither known nor present in this tenant's timelines (a kind learned from a new
    service's events can be filtered on as soon as it exists)."""
    unknown = [k for k in kinds if k not in KNOWN_KINDS]
    missing = []
    for kind in unknown:
        found = await session.scalar(select(Interaction.id).where(Interaction.kind == kind).limit(1))
        if found is None:
            missing.append(kind)
    return missing


async def list_timeline(
    session: AsyncSession,
    contact_id: str,
    *,
    kinds: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    page_size: int,
    page_token: str,
    filters: dict[str, Any],
) -> tuple[list[Interaction], str]:
    """One page of a contact's timeline, newest first, keyset-paginated on (occurred_at, id)."""
    size = pagination.page_size(page_size)
    after = pagination.decode_key(page_token, filters, 2)
    where: list[ColumnElement[bool]] = [Interaction.contact_id == contact_id]
    if kinds:
        where.append(Interaction.kind.in_(list(kinds)))
    if since is not None:
        where.append(Interaction.occurred_at >= since)
    if until is not None:
        where.append(Interaction.occurred_at < until)
    if after is not None:
        v = Violations()
        at = parse_time(v, "page_token", after[0])
        if v or at is None:
            raise InvalidArgument.field("page_token", "is not a token this service issued")
        # A row-value comparison: one range on the (tenant, contact, occurred_at, id) index, however deep.
        where.append(tuple_(Interaction.occurred_at, Interaction.id) < tuple_(at, after[1]))
    stmt = (
        select(Interaction)
        .where(*where)
        .order_by(Interaction.occurred_at.desc(), Interaction.id.desc())
        .limit(size + 1)
    )
    rows = list((await session.execute(stmt)).scalars())
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        token = pagination.encode_token([last.occurred_at.astimezone(UTC).isoformat(), last.id], filters)
    return rows, token


# --- learned from events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    subject: str
    details: dict[str, Any]


Summarizer = Callable[[str, dict[str, Any], dict[str, Any]], Summary | None]
DETAIL_FIELDS = (
    "name",
    "subject",
    "title",
    "number",
    "amount",
    "currency",
    "stage",
    "status",
    "priority",
    "channel",
    "campaign_id",
    "campaign_name",
    "response",
)


def _s(value: Any, limit: int = 255) -> str:
    return value.strip()[:limit] if isinstance(value, str) else ""


def _picked(action: str, resource: dict[str, Any], *fields: str) -> dict[str, Any]:
    details: dict[str, Any] = {"action": action}
    for name in fields:
        value = resource.get(name)
        if isinstance(value, str) and value.strip():
            details[name] = value.strip()[:255]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            details[name] = value
    return details


def _quoted(title: str) -> str:
    return f"“{title}”" if title else "(untitled)"


def opportunity_summary(action: str, opp: dict[str, Any], data: dict[str, Any]) -> Summary | None:
    """created, stage_changed, won and lost (an edit is an `updated` event too, shown by stage_changed)."""
    name = _quoted(_s(opp.get("name")))
    money = " ".join(p for p in (_s(opp.get("amount")), _s(opp.get("currency"))) if p)
    details = _picked(action, opp, "name", "amount", "currency", "stage", "status")
    if action == "created":
        subject = f"Opportunity {name} created" + (f" ({money}, stage {_s(opp.get('stage'))})" if money else "")
    elif action == "stage_changed":
        src, dst = _s(data.get("from_stage"), 64), _s(data.get("to_stage"), 64) or _s(opp.get("stage"), 64)
        details.update({"from_stage": src, "to_stage": dst})
        subject = f"Opportunity {name} moved from {src} to {dst}" if src else f"Opportunity {name} moved to {dst}"
    elif action in ("won", "lost"):
        subject = f"Opportunity {name} {action}" + (f" ({money})" if money else "")
    else:
        return None
    return Summary(subject, details)


def ticket_summary(action: str, ticket: dict[str, Any], data: dict[str, Any]) -> Summary | None:
    """created, and status changes (resolved, closed, reopened...); other edits are not timeline news."""
    title = _quoted(_s(ticket.get("subject")))
    status = _s(ticket.get("status"), 32)
    details = _picked(action, ticket, "subject", "status", "priority", "channel")
    changed = data.get("changed")
    if action == "created":
        priority = _s(ticket.get("priority"), 32)
        subject = f"Ticket {title} opened" + (f" ({priority} priority)" if priority else "")
    elif action == "updated" and isinstance(changed, list) and "status" in changed:
        subject = f"Ticket {title} {status}" if status in ("resolved", "closed") else f"Ticket {title} is {status}"
    elif action in ("resolved", "closed", "reopened", "escalated"):
        subject = f"Ticket {title} {action}"
    else:
        return None
    return Summary(subject, details)


def campaign_response_summary(action: str, response: dict[str, Any], data: dict[str, Any]) -> Summary | None:
    """A response to a campaign (`campaign_response.created`, or `<campaign|survey|...>.responded` whose data
    holds the campaign beside the response)."""
    if action in ("updated", "deleted"):
        return None
    others = [v for v in data.values() if isinstance(v, dict) and v is not response]
    name = _s(response.get("campaign_name")) or next((_s(o.get("name")) for o in others if _s(o.get("name"))), "")
    details = _picked(action, response, "campaign_id", "campaign_name", "response", "channel", "status")
    if name and "campaign_name" not in details:
        details["campaign_name"] = name
    answer = _s(response.get("response"), 64)
    subject = f"Responded to campaign {_quoted(name)}" + (f": {answer}" if answer else "")
    return Summary(subject, details)


def generic_summary(kind: str) -> Summarizer:
    """Orders, complaints and any other entity: every action but plain edits and deletions, and edits
    that change a status or stage."""
    label = kind.replace("_", " ").capitalize()

    def summarize(action: str, resource: dict[str, Any], data: dict[str, Any]) -> Summary | None:
        changed = data.get("changed")
        if action == "deleted":
            return None
        if action == "updated" and not (isinstance(changed, list) and {"status", "stage"} & set(changed)):
            return None
        title = next((_s(resource.get(f)) for f in ("name", "subject", "title", "number") if _s(resource.get(f))), "")
        status = _s(resource.get("status"), 32) or _s(resource.get("stage"), 32)
        what = f"{label} {_quoted(title)}" if title else label
        subject = f"{what} is {status}" if action == "updated" and status else f"{what} {action.replace('_', ' ')}"
        return Summary(subject, _picked(action, resource, *DETAIL_FIELDS))

    return summarize


SUMMARIES: dict[str, Summarizer] = {
    "opportunity": opportunity_summary,
    "ticket": ticket_summary,
    "order": generic_summary("order"),
    "complaint": generic_summary("complaint"),
    "campaign_response": campaign_response_summary,
}


@dataclass(frozen=True)
class Learned:
    """What one event adds to a timeline."""

    kind: str
    contact_id: str
    source: str
    summary: Summary
    reference_type: str
    reference_id: str
    owner_id: str


def _resource_with_contact(data: dict[str, Any], *keys: str) -> dict[str, Any] | None:
    for key in keys:
        candidate = data.get(key)
        if isinstance(candidate, dict) and _s(candidate.get("contact_id")):
            return candidate
    return None


def learn(event: Event) -> Learned | None:
    """The timeline entry an event produces, or None (not about a contact, or not timeline news)."""
    try:
        context, entity, action = parse_type(event.type)
    except InvalidSubject:
        return None
    if context == RECORDED_SOURCE:  # our own events: interactions are recorded directly
        return None
    responded = action == "responded"
    kind = "campaign_response" if responded else entity.lower()
    resource = _resource_with_contact(event.data, entity, "response") if responded else None
    resource = resource or _resource_with_contact(event.data, entity)
    if resource is None:
        return None
    contact_id = _s(resource.get("contact_id"), 100)
    if len(contact_id) > 36 or not validation.ID.match(contact_id):
        log.warning("%s %s: contact_id %r is not an id; not added to a timeline", event.type, event.id, contact_id)
        return None
    summary = SUMMARIES.get(kind, generic_summary(kind))(action, resource, event.data)
    if summary is None:
        return None
    return Learned(
        kind=kind[:64],
        contact_id=contact_id,
        source=context,
        summary=Summary(summary.subject[:MAX_SUBJECT], summary.details),
        reference_type=entity.lower()[:64],
        reference_id=_s(resource.get("id"), 64) or event.subject[:64],
        owner_id=_s(resource.get("owner_id"), 64),
    )


def entry_id(tenant_id: str, event_id: str, at: datetime) -> str:
    """A UUIDv7 with the event's time and 74 bits of hash of (tenant, event id): the same event always
    makes the same entry, whoever replays it."""
    digest = int.from_bytes(hashlib.sha256(f"{tenant_id}\x00{event_id}".encode()).digest()[:10], "big")
    ms = max(int(at.timestamp() * 1000), 0) & ((1 << 48) - 1)
    rand_a = (digest >> 62) & 0xFFF
    rand_b = digest & ((1 << 62) - 1)
    value = ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


async def apply_event(session: AsyncSession, event: Event) -> None:
    """The `customer-timeline` consumer's handler (inside the event's tenant scope and transaction)."""
    learned = learn(event)
    if learned is None:
        return
    if await is_erased(session, learned.contact_id):  # crm_kit.privacy: a late event must not bring them back
        return
    id_ = entry_id(event.tenant_id, event.id, event.time)
    if await session.get(Interaction, id_) is not None:
        return
    contact_id = learned.contact_id
    if await session.get(Contact, contact_id) is None:
        # An event about a contact merged away meanwhile (sent before the merge, or by a service that has
        # not repointed yet) goes to the survivor, and is listed with the merge so an unmerge takes it back.
        from crm_customer import merge  # merge builds on this module

        contact_id = await merge.take_late_entry(session, contact_id, id_)
        if contact_id != learned.contact_id and await is_erased(session, contact_id):
            return
    now = utcnow()
    session.add(
        Interaction(
            id=id_,
            contact_id=contact_id,
            kind=learned.kind,
            occurred_at=event.time,
            subject=learned.summary.subject,
            body="",
            direction="",
            duration_seconds=0,
            owner_id=learned.owner_id,
            source=learned.source,
            reference_type=learned.reference_type,
            reference_id=learned.reference_id,
            details=learned.summary.details,
            event_id=event.id[:64],
            version=1,
            create_time=now,
            update_time=now,
        )
    )


def subscription() -> Subscription:
    """The durable consumer learning timeline entries from sales, servicedesk and marketing events."""
    return Subscription(name=CONSUMER, subjects=list(SUBJECTS), handler=apply_event)


# --- merge, unmerge and privacy -----------------------------------------------------------------------

_CHUNK = 500


async def repoint_contact(session: AsyncSession, from_id: str, to_id: str) -> list[str]:
    """Move every entry of contact `from_id` to `to_id` (a merge); returns the moved ids, for `restore`.
    One UPDATE ... RETURNING, so an entry arriving meanwhile is either moved and listed, or not moved."""
    if from_id == to_id:
        return []
    stmt = (
        update(Interaction)
        .where(Interaction.contact_id == from_id)
        .values(contact_id=to_id, version=Interaction.version + 1, update_time=utcnow())
        .returning(Interaction.id)
        .execution_options(synchronize_session=False)
    )
    return sorted((await session.execute(stmt)).scalars().all())


async def restore(session: AsyncSession, ids: Sequence[str], to_id: str) -> list[str]:
    """Move the entries `ids` (as returned by `repoint_contact`) to contact `to_id` (an unmerge); returns
    the ids that still existed and were moved."""
    moved: list[str] = []
    unique = sorted(set(ids))
    for start in range(0, len(unique), _CHUNK):
        stmt = (
            update(Interaction)
            .where(Interaction.id.in_(unique[start : start + _CHUNK]))
            .values(contact_id=to_id, version=Interaction.version + 1, update_time=utcnow())
            .returning(Interaction.id)
            .execution_options(synchronize_session=False)
        )
        moved.extend((await session.execute(stmt)).scalars().all())
    return sorted(moved)


async def contact_entries(session: AsyncSession, contact_id: str) -> list[Interaction]:
    """Every entry of a contact, oldest first (for a personal-data export)."""
    stmt = (
        select(Interaction)
        .where(Interaction.contact_id == contact_id)
        .order_by(Interaction.occurred_at, Interaction.id)
    )
    return list((await session.execute(stmt)).scalars())


async def erase_contact(session: AsyncSession, contact_id: str) -> list[str]:
    """Delete every entry of a contact (erasure) and blank the values of their audit entries; returns the
    deleted ids."""
    stmt = (
        sql_delete(Interaction)
        .where(Interaction.contact_id == contact_id)
        .returning(Interaction.id)
        .execution_options(synchronize_session=False)
    )
    ids = sorted((await session.execute(stmt)).scalars().all())
    for id_ in ids:
        await audit.redact_audit(session, entity=ENTITY, entity_id=id_)
    return ids
