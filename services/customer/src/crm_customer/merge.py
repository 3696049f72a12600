"""Merging a duplicate contact into a survivor, and undoing it within the retention window.

Merge (one transaction):
- the survivor's values: for every field, a `field_choices` entry ("survivor" or "duplicate") decides;
  without one, the survivor's non-empty value wins and an empty one is filled from the duplicate ("unknown"
  gender counts as empty); list fields are the union without duplicates, the survivor's entries first
  (at most 20 contact points of a kind); `email`/`phone` choose which primary entry leads; custom fields
  per key like scalars ("custom_fields.<key>");
- every row of the customer database naming the duplicate moves to the survivor: timeline entries
  (`timeline.repoint_contact`), consents and the field history; their ids are kept per table;
- the duplicate is deleted from `contacts` (so search, lists, uniqueness and candidates never see it), and
  kept in `contact_merges` as a full snapshot with the survivor's values before and after the merge: that
  row is the soft-deleted copy unmerge restores, until `expire_time` (the merge time plus the tenant's
  `merge_retention_days` at the time of the merge, crm_customer.settings: a later change of the setting
  applies to later merges only);
- events: `contact.deleted` (the duplicate), `contact.updated` (the survivor, version + 1) and
  `crm.customer.contact.merged` {merge_id, survivor_id, duplicate_id, survivor_name}; the kit's contact
  projection (sales, servicedesk) repoints its records on it; audit entries for all three.

Unmerge (one transaction): the duplicate comes back from its snapshot with the same id (version + 1 over
the deleted one, `contact.created`), the moved rows that still exist go back to it, and the survivor's
fields get their pre-merge values back - only the fields the merge changed, and only where the survivor
still has the value the merge gave it: a field edited after the merge keeps its newer value, and fields the
merge did not touch are never changed. `crm.customer.contact.unmerged` names the records learned from
other services (the timeline's references) that were the duplicate's, so their services repoint them back.

Purge: past `expire_time` a merge can no longer be undone, so its snapshots (`duplicate_snapshot`,
`survivor_before`, `survivor_after`: the person's data) are emptied and `purge_time` set; the row keeps who
merged what and when (ids, `merged_by`, the times, `field_choices`, the moved row ids). `purge_expired`
does it for every tenant: hourly housekeeping of the service process (`purge_chore`, a chore of
crm_customer.app's ServiceSpec) and the command `crm-customer purge-merges`. On PostgreSQL the application
role, bound by row-level security, calls the SECURITY DEFINER function
`crm_purge_merge_snapshots(timestamptz)` (migration 0011), which can do nothing else; on SQLite it is a
plain UPDATE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, DateTime, Index, String, bindparam, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from crm.customer.v1 import customer_pb2, dedupe_pb2
from crm_customer import history, settings, timeline
from crm_customer.contact_points import MAX_ENTRIES
from crm_customer.history import ContactFieldChange
from crm_customer.models import Base, Contact
from crm_kit import audit
from crm_kit.crud import ResourceStore
from crm_kit.db import Database, TenantScoped, utcnow, uuid7
from crm_kit.db.base import UtcDateTime
from crm_kit.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, StaleVersion, Violations
from crm_kit.events.outbox import record_event

log = logging.getLogger(__name__)

SOURCE = "crm.customer"
MERGED = "crm.customer.contact.merged"
UNMERGED = "crm.customer.contact.unmerged"
ACTIVE, UNMERGED_STATE, EXPIRED = "active", "unmerged", "expired"
PURGE_FUNCTION = "crm_purge_merge_snapshots"
PURGE_INTERVAL = timedelta(hours=1)
SURVIVOR, DUPLICATE = "survivor", "duplicate"
SCALARS = (
    "first_name",
    "last_name",
    "gender",
    "birthday",
    "job_title",
    "department",
    "account_id",
    "owner_id",
    "source",
    "classification",
    "lifecycle_stage",
    "external_id",
)
# list field -> what makes two entries the same
LISTS: dict[str, Callable[[Any], Any]] = {
    "emails": lambda e: e.get("address"),
    "phones": lambda e: e.get("number"),
    "addresses": lambda e: tuple(sorted((k, v) for k, v in e.items() if k != "primary")),
    "social_accounts": lambda e: (e.get("platform"), e.get("handle")),
    "preferences": lambda e: e.get("key"),
    "interests": lambda e: e,
    "tags": lambda e: e,
}
MIRRORS = {"email": ("emails", "address"), "phone": ("phones", "number")}
CHOOSABLE = (*SCALARS, *LISTS, *MIRRORS)
CUSTOM_PREFIX = "custom_fields."
SNAPSHOT_SKIP = ("tenant_id", "search_text", "search_rowid", "search_vector")
TIMES = ("create_time", "update_time")
MOVED_INTERACTIONS, MOVED_CONSENTS, MOVED_HISTORY = "interactions", "consents", "field_history"


class ContactMerge(Base, TenantScoped):
    __tablename__ = "contact_merges"
    __table_args__ = (
        Index("ix_contact_merges_tenant_id_survivor_id", "tenant_id", "survivor_id"),
        Index("ix_contact_merges_tenant_id_duplicate_id", "tenant_id", "duplicate_id"),
        # The purge's lookup across tenants: only rows still holding snapshots.
        Index(
            "ix_contact_merges_expire_time_unpurged",
            "expire_time",
            sqlite_where=text("purge_time IS NULL"),
            postgresql_where=text("purge_time IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=uuid7)
    survivor_id: Mapped[str] = mapped_column(String(36), nullable=False)
    duplicate_id: Mapped[str] = mapped_column(String(36), nullable=False)
    duplicate_snapshot: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    survivor_before: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    survivor_after: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    moved: Mapped[dict[str, list[str]]] = mapped_column(JSON, nullable=False)
    field_choices: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False)
    merged_by: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    merge_time: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, default=utcnow)
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    unmerged_by: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    unmerge_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # When the snapshots were emptied (see the module docstring); NULL while they hold the data.
    purge_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


def expired(row: ContactMerge, now: datetime | None = None) -> bool:
    """Past its retention window (the purge empties the snapshots within an hour after expire_time)."""
    return row.purge_time is not None or (now or utcnow()) >= row.expire_time


def state(row: ContactMerge, now: datetime | None = None) -> str:
    """active (can be undone), unmerged or expired (past expire_time, or purged)."""
    if row.unmerge_time is not None:
        return UNMERGED_STATE
    return EXPIRED if expired(row, now) else ACTIVE


def holds_snapshots(row: ContactMerge, now: datetime | None = None) -> bool:
    """Whether the merge's snapshots may still be shown."""
    return not expired(row, now) and bool(row.duplicate_snapshot)


def is_empty(field: str, value: Any) -> bool:
    return value in (None, "", [], {}) or (field == "gender" and value == "unknown")


def snapshot(row: Contact) -> dict[str, Any]:
    """Every stored column of a contact (but the tenant and the search structures), as JSON values."""
    out = {}
    for column in Contact.__table__.columns:
        if column.key not in SNAPSHOT_SKIP:
            out[column.key] = audit.jsonable(getattr(row, column.key))
    return out


def _from_snapshot(values: Mapping[str, Any]) -> dict[str, Any]:
    known = {c.key for c in Contact.__table__.columns} - set(SNAPSHOT_SKIP)
    out = {k: v for k, v in values.items() if k in known}
    for key in TIMES:
        if isinstance(out.get(key), str):
            out[key] = datetime.fromisoformat(out[key].replace("Z", "+00:00"))
    return out


def check_choices(choices: Mapping[str, str]) -> dict[str, str]:
    v = Violations()
    out: dict[str, str] = {}
    for key, side in choices.items():
        field = f"field_choices.{key}"
        name = key.strip()
        if name not in CHOOSABLE and not (name.startswith(CUSTOM_PREFIX) and len(name) > len(CUSTOM_PREFIX)):
            v.add(field, f"is not a mergeable field: one of {', '.join(CHOOSABLE)} or custom_fields.<key>")
            continue
        side = side.strip().lower()
        if side not in (SURVIVOR, DUPLICATE):
            v.add(field, "must be survivor or duplicate")
            continue
        out[name] = side
    v.raise_if_any()
    return out


def _union(field: str, first: Sequence[Any], second: Sequence[Any]) -> list[Any]:
    key = LISTS[field]
    seen = {key(e) for e in first}
    out = list(first)
    for entry in second:
        k = key(entry)
        if k in seen:
            continue
        seen.add(k)
        out.append({**entry, "primary": False} if isinstance(entry, dict) and "primary" in entry else entry)
    return out


def _lead_with(entries: list[dict[str, Any]], key: str, value: str) -> list[dict[str, Any]]:
    return [{**e, "primary": e.get(key) == value} for e in entries]


def _primary(entries: Sequence[dict[str, Any]], key: str) -> str:
    for entry in entries:
        if entry.get("primary"):
            return str(entry.get(key) or "")
    return str(entries[0].get(key) or "") if entries else ""


def merged_values(survivor: Contact, duplicate: Contact, choices: Mapping[str, str]) -> dict[str, Any]:
    """The survivor's column values after the merge (only columns the merge changes are returned)."""
    out: dict[str, Any] = {}
    for field in SCALARS:
        mine, theirs = getattr(survivor, field), getattr(duplicate, field)
        choice = choices.get(field)
        if choice == DUPLICATE or (choice is None and is_empty(field, mine) and not is_empty(field, theirs)):
            out[field] = theirs
    for field in LISTS:
        mine, theirs = list(getattr(survivor, field) or []), list(getattr(duplicate, field) or [])
        choice = choices.get(field)
        if choice == SURVIVOR:
            continue
        out[field] = list(theirs) if choice == DUPLICATE else _union(field, mine, theirs)
    for top, (list_field, key) in MIRRORS.items():
        entries = out.get(list_field, list(getattr(survivor, list_field) or []))
        lead = getattr(duplicate if choices.get(top) == DUPLICATE else survivor, top) or _primary(entries, key)
        if lead and any(e.get(key) == lead for e in entries):
            entries = _lead_with(entries, key, lead)
        primary = next((e for e in entries if e.get("primary")), None)
        rest = [e for e in entries if e is not primary]
        out[list_field] = ([primary] if primary else []) + rest[: MAX_ENTRIES - (1 if primary else 0)]
        out[top] = _primary(out[list_field], key)
    custom = dict(survivor.custom_fields or {})
    for key, value in (duplicate.custom_fields or {}).items():
        choice = choices.get(CUSTOM_PREFIX + key)
        if choice == DUPLICATE or (choice is None and is_empty(key, custom.get(key))):
            custom[key] = value
    for name, choice in choices.items():  # a duplicate without the key: choosing it removes the value
        key = name.removeprefix(CUSTOM_PREFIX)
        if name.startswith(CUSTOM_PREFIX) and choice == DUPLICATE and key not in (duplicate.custom_fields or {}):
            custom.pop(key, None)
    out["custom_fields"] = custom
    return {k: v for k, v in out.items() if getattr(survivor, k) != v}


def merge_message(row: ContactMerge, to_contact: Callable[[Contact], customer_pb2.Contact]) -> dedupe_pb2.ContactMerge:
    msg = dedupe_pb2.ContactMerge(
        id=row.id,
        survivor_id=row.survivor_id,
        duplicate_id=row.duplicate_id,
        field_choices=dict(row.field_choices or {}),
        moved={k: len(v) for k, v in (row.moved or {}).items()},
        merged_by=row.merged_by,
        unmerged_by=row.unmerged_by,
        state=state(row),
    )
    if holds_snapshots(row):
        msg.duplicate.CopyFrom(to_contact(Contact(**_from_snapshot(row.duplicate_snapshot))))
    else:  # expired: the person's data is gone (or about to be), the id stays
        msg.duplicate.id = row.duplicate_id
    msg.merge_time.FromDatetime(row.merge_time)
    msg.expire_time.FromDatetime(row.expire_time)
    if row.unmerge_time is not None:
        msg.unmerge_time.FromDatetime(row.unmerge_time)
    if row.purge_time is not None:
        msg.purge_time.FromDatetime(row.purge_time)
    return msg


async def active_merge_of(session: AsyncSession, duplicate_id: str) -> ContactMerge | None:
    stmt = select(ContactMerge).where(ContactMerge.duplicate_id == duplicate_id, ContactMerge.unmerge_time.is_(None))
    return (await session.execute(stmt.limit(1))).scalar_one_or_none()


async def take_late_entry(session: AsyncSession, contact_id: str, interaction_id: str) -> str:
    """Where a timeline entry learned for `contact_id` belongs when that contact was merged away: its
    survivor (following merges of merges), with the entry added to the merge's moved interactions so that
    an unmerge takes it back. `contact_id` itself when it was not merged away."""
    first = await active_merge_of(session, contact_id)
    if first is None:
        return contact_id
    target, seen = first.survivor_id, {contact_id}
    while target not in seen and (onward := await active_merge_of(session, target)) is not None:
        seen.add(target)
        target = onward.survivor_id
    moved = dict(first.moved or {})
    moved[MOVED_INTERACTIONS] = sorted({*moved.get(MOVED_INTERACTIONS, []), interaction_id})
    first.moved = moved  # a new dict: the JSON column sees the change
    await session.flush()
    return target


async def _move(session: AsyncSession, model: Any, where: Any, to_id: str) -> list[str]:
    stmt = (
        update(model)
        .where(where)
        .values(contact_id=to_id)
        .returning(model.id)
        .execution_options(synchronize_session=False)
    )
    return sorted((await session.execute(stmt)).scalars().all())


async def _move_ids(session: AsyncSession, model: Any, ids: Sequence[str], from_id: str, to_id: str) -> list[str]:
    moved: list[str] = []
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        moved += await _move(session, model, (model.id.in_(chunk)) & (model.contact_id == from_id), to_id)
    return moved


def _duplicate_field(field: str) -> str:
    return "duplicate_id" if field == "id" else field


async def merge(
    session: AsyncSession,
    store: ResourceStore[Contact],
    request: dedupe_pb2.MergeContactsRequest,
) -> tuple[ContactMerge, Contact]:
    """Merge `request.duplicate_id` into `request.id` (see the module docstring)."""
    from crm_customer.privacy import Consent  # privacy declares this module's tables

    survivor_id, duplicate_id = request.id.strip(), request.duplicate_id.strip()
    v = Violations()
    if not survivor_id:
        v.add("id", "is required")
    if not duplicate_id:
        v.add("duplicate_id", "is required")
    elif duplicate_id == survivor_id:
        v.add("duplicate_id", "must name another contact than the survivor")
    v.raise_if_any()
    choices = check_choices(request.field_choices)
    survivor = await store.get(session, survivor_id, for_update=True)
    earlier = await active_merge_of(session, duplicate_id)
    if earlier is not None:
        raise FailedPrecondition(
            f"contact {duplicate_id!r} was already merged into {earlier.survivor_id!r}",
            [FieldViolation("duplicate_id", f"was already merged into contact {earlier.survivor_id}")],
        )
    try:
        duplicate = await store.get(session, duplicate_id, for_update=True)
    except NotFound:
        raise InvalidArgument.field("duplicate_id", f"contact {duplicate_id!r} does not exist") from None
    if request.survivor_version and request.survivor_version != survivor.version:
        raise StaleVersion(request.survivor_version, survivor.version)
    if request.duplicate_version and request.duplicate_version != duplicate.version:
        raise StaleVersion(request.duplicate_version, duplicate.version)

    values = merged_values(survivor, duplicate, choices)
    cfg = await settings.get_settings(session)
    before_state = snapshot(survivor)
    dup_state = snapshot(duplicate)
    moved = {
        MOVED_INTERACTIONS: await timeline.repoint_contact(session, duplicate_id, survivor_id),
        MOVED_CONSENTS: await _move(session, Consent, Consent.contact_id == duplicate_id, survivor_id),
        MOVED_HISTORY: await _move(
            session, ContactFieldChange, ContactFieldChange.contact_id == duplicate_id, survivor_id
        ),
    }
    await store.delete(session, duplicate_id, 0)  # contact.deleted, its audit entry, its index rows
    row, before = await store.update(session, survivor_id, values, 0)
    if not before:  # nothing to take over: the survivor still changed (it gained the duplicate's history)
        row.version += 1
        row.update_time = utcnow()
        await session.flush()
        await store.emit(session, row, "updated", changed=[])
    history.record(session, row, before)
    now = utcnow()
    record = ContactMerge(
        id=uuid7(),
        survivor_id=survivor_id,
        duplicate_id=duplicate_id,
        duplicate_snapshot=dup_state,
        survivor_before=before_state,
        survivor_after=snapshot(row),
        moved=moved,
        field_choices=choices,
        merged_by=history.actor(),
        merge_time=now,
        expire_time=now + cfg.merge_retention,
    )
    session.add(record)
    await session.flush()
    await audit.record_audit(
        session,
        action="merge",
        entity="contact",
        entity_id=survivor_id,
        before={k: audit.jsonable(v) for k, v in before.items()},
        after={
            "merge_id": record.id,
            "duplicate_id": duplicate_id,
            **{k: audit.jsonable(getattr(row, k)) for k in before},
        },
    )
    await record_event(
        session,
        source=SOURCE,
        type=MERGED,
        subject=survivor_id,
        data={
            "merge_id": record.id,
            "survivor_id": survivor_id,
            "duplicate_id": duplicate_id,
            "survivor": {
                "id": row.id,
                "first_name": row.first_name,
                "last_name": row.last_name,
                "display_name": row.display_name,
                "version": row.version,
            },
        },
    )
    return record, row


async def list_merges(session: AsyncSession, contact_id: str) -> list[ContactMerge]:
    stmt = (
        select(ContactMerge)
        .where(or_(ContactMerge.survivor_id == contact_id, ContactMerge.duplicate_id == contact_id))
        .order_by(ContactMerge.merge_time.desc(), ContactMerge.id.desc())
    )
    return list((await session.execute(stmt)).scalars())


def _restored_values(current: Contact, before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The survivor's fields to set back: those the merge changed and nobody changed since."""
    now = snapshot(current)
    out: dict[str, Any] = {}
    for field in (*SCALARS, *LISTS, *MIRRORS):
        if before.get(field) != after.get(field) and now.get(field) == after.get(field):
            out[field] = before.get(field)
    was, merged, custom = (
        before.get("custom_fields") or {},
        after.get("custom_fields") or {},
        dict(now.get("custom_fields") or {}),
    )
    for key in set(was) | set(merged):
        if was.get(key) != merged.get(key) and custom.get(key) == merged.get(key):
            if key in was:
                custom[key] = was[key]
            else:
                custom.pop(key, None)
    if custom != (now.get("custom_fields") or {}):
        out["custom_fields"] = custom
    return out


async def unmerge(
    session: AsyncSession, store: ResourceStore[Contact], merge_id: str
) -> tuple[ContactMerge, Contact, Contact]:
    """Undo the merge `merge_id`; returns the merge, the survivor and the restored duplicate."""
    from crm_customer.privacy import Consent

    if not merge_id.strip():
        raise InvalidArgument.field("merge_id", "is required")
    stmt = select(ContactMerge).where(ContactMerge.id == merge_id.strip()).with_for_update()
    record = (await session.execute(stmt)).scalar_one_or_none()
    if record is None:
        raise NotFound("contact merge", merge_id)
    if record.unmerge_time is not None:
        raise FailedPrecondition(
            f"merge {record.id!r} was already undone", [FieldViolation("merge_id", "was already undone")]
        )
    now = utcnow()
    if expired(record, now):
        raise FailedPrecondition(
            f"merge {record.id!r} can no longer be undone: its retention window ended at "
            f"{audit.jsonable(record.expire_time)}",
            [FieldViolation("merge_id", "the unmerge window has ended")],
        )
    try:
        survivor = await store.get(session, record.survivor_id, for_update=True)
    except NotFound:
        raise FailedPrecondition(
            f"the survivor {record.survivor_id!r} of merge {record.id!r} no longer exists",
            [FieldViolation("merge_id", "the surviving contact no longer exists")],
        ) from None
    if await session.get(Contact, record.duplicate_id) is not None:
        raise FailedPrecondition(
            f"contact {record.duplicate_id!r} exists again", [FieldViolation("merge_id", "the duplicate exists")]
        )
    values = _restored_values(survivor, record.survivor_before, record.survivor_after)
    # The survivor first: it frees the duplicate's external id (if the merge gave it) before it returns.
    row, _ = await store.update(session, survivor.id, values, 0)
    if not values:
        row.version += 1
        row.update_time = now
        await session.flush()
        await store.emit(session, row, "updated", changed=[])
    state = _from_snapshot(record.duplicate_snapshot)
    state["version"] = int(state.get("version") or 1) + 1
    state["update_time"] = now
    duplicate = Contact(**state)
    session.add(duplicate)
    await session.flush()
    await store.emit(session, duplicate, "created")
    await audit.record_audit(
        session, action="unmerge", entity="contact", entity_id=duplicate.id, after=store.record(duplicate)
    )
    moved = record.moved or {}
    restored = await timeline.restore(session, moved.get(MOVED_INTERACTIONS, []), duplicate.id)
    await _move_ids(session, Consent, moved.get(MOVED_CONSENTS, []), survivor.id, duplicate.id)
    await _move_ids(session, ContactFieldChange, moved.get(MOVED_HISTORY, []), survivor.id, duplicate.id)
    references = await _references(session, restored)
    record.unmerge_time, record.unmerged_by = now, history.actor()
    await session.flush()
    await audit.record_audit(
        session,
        action="unmerge",
        entity="contact",
        entity_id=survivor.id,
        before={k: audit.jsonable(v) for k, v in record.survivor_after.items() if k in values},
        after={
            "merge_id": record.id,
            "duplicate_id": duplicate.id,
            **{k: audit.jsonable(v) for k, v in values.items()},
        },
    )
    await record_event(
        session,
        source=SOURCE,
        type=UNMERGED,
        subject=survivor.id,
        data={
            "merge_id": record.id,
            "survivor_id": survivor.id,
            "duplicate_id": duplicate.id,
            "duplicate": {
                "id": duplicate.id,
                "first_name": duplicate.first_name,
                "last_name": duplicate.last_name,
                "display_name": duplicate.display_name,
                "version": duplicate.version,
            },
            "references": references,
        },
    )
    return record, row, duplicate


async def _references(session: AsyncSession, interaction_ids: Sequence[str]) -> list[dict[str, str]]:
    """The records of other services that the duplicate's timeline entries name (type and id)."""
    found: dict[tuple[str, str], None] = {}
    ids = list(interaction_ids)
    for start in range(0, len(ids), 500):
        stmt = select(timeline.Interaction.reference_type, timeline.Interaction.reference_id).where(
            timeline.Interaction.id.in_(ids[start : start + 500]),
            timeline.Interaction.source != timeline.RECORDED_SOURCE,
            timeline.Interaction.reference_id != "",
        )
        for kind, ref in (await session.execute(stmt)).all():
            found[(str(kind), str(ref))] = None
    return [{"type": kind, "id": ref} for kind, ref in found]


# --- housekeeping: the snapshots of expired merges are emptied ----------------------------------------

EMPTIED: dict[str, Any] = {"duplicate_snapshot": {}, "survivor_before": {}, "survivor_after": {}}


async def purge_expired(db: Database, now: datetime | None = None) -> int:
    """Empty the snapshots of every tenant's merges whose `expire_time` passed at `now` (default: the
    current time) and that still hold them; returns how many merges were purged. Idempotent, and safe to
    run in several replicas at once.

    On PostgreSQL through `crm_purge_merge_snapshots` (the application role cannot see other tenants' rows;
    the function also never purges before expire_time by the database's own clock)."""
    cutoff = now or utcnow()
    if db.dialect == "postgresql":
        call = text(f"SELECT {PURGE_FUNCTION}(:now)").bindparams(bindparam("now", type_=DateTime(timezone=True)))
        async with db.engine.begin() as connection:
            return int((await connection.execute(call, {"now": cutoff})).scalar() or 0)
    table = ContactMerge.__table__
    stmt = (
        update(table)
        .where(table.c.purge_time.is_(None), table.c.expire_time <= cutoff)
        .values(**EMPTIED, purge_time=cutoff)
    )
    async with db.engine.begin() as connection:
        result: Any = await connection.execute(stmt)
        return int(result.rowcount or 0)


async def purge_chore(db: Database) -> None:
    """`purge_expired` as the service's periodic housekeeping (crm_customer.app)."""
    purged = await purge_expired(db)
    if purged:
        log.info("emptied the snapshots of %d expired contact merges", purged)


# --- privacy: merges and pairs name the person ---------------------------------------------------------


async def export_person(session: AsyncSession, contact_id: str) -> list[dict[str, Any]]:
    """The merges the contact took part in, as stored (a purged merge has empty snapshots), with their
    state."""
    from crm_kit.privacy import row_document

    return [{**row_document(r), "state": state(r)} for r in await list_merges(session, contact_id)]


async def absorbed(session: AsyncSession, contact_id: str) -> list[str]:
    """The contacts merged into this one (and into those, and so on) and not unmerged: the same person."""
    found: list[str] = []
    frontier = [contact_id]
    while frontier:
        stmt = select(ContactMerge.duplicate_id).where(
            ContactMerge.survivor_id.in_(frontier), ContactMerge.unmerge_time.is_(None)
        )
        frontier = [i for i in (await session.execute(stmt)).scalars() if i != contact_id and i not in found]
        found += frontier
    return found


async def erase_person(session: AsyncSession, contact_id: str) -> int:
    """Delete the merges the contact took part in (their snapshots hold the person's data) and the
    duplicate pairs naming it."""
    from crm_customer import dedupe

    rows = await list_merges(session, contact_id)
    for row in rows:
        await session.delete(row)
    await session.flush()
    return len(rows) + await dedupe.erase_pairs(session, contact_id)
