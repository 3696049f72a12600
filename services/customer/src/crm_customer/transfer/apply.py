"""Applying planned rows inside the caller's transaction, with everything a single write leaves behind:
the `crm.customer.contact.created/updated` outbox events, audit entries, the history of owner,
classification and stage, the custom-field index and the search structures.

Creates are built first (`build_creates`, pure, so an import builds them in a worker process while the
service writes the previous chunk) and written in multi-row INSERTs (`write_creates`): the contact rows with
their search document, FTS rows, tags and match keys (`crm_customer.bulk`), and their events, audit entries,
history rows and custom-field index rows. Updates go through the ORM, so the mapper events keep the search
document, tags and custom-field index true, exactly as UpdateContact does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customer import bulk, custom_fields, history
from crm_customer.custom_fields import Catalog, CustomFieldValue
from crm_customer.history import ContactFieldChange
from crm_customer.models import Contact
from crm_customer.servicer import contact_message
from crm_customer.transfer.rows import Plan, Snapshot
from crm_kit import audit
from crm_kit.context import current_principal, require_tenant
from crm_kit.db.base import utcnow
from crm_kit.db.system_tables import OutboxMessage
from crm_kit.events import outbox
from crm_kit.protos import to_dict

SOURCE = "crm.customer"
CREATED = "crm.customer.contact.created"
UPDATED = "crm.customer.contact.updated"


def _table(model: Any) -> Any:
    return model.__table__


@dataclass(frozen=True)
class Stamp:
    """Who writes, in which tenant and trace: taken from the request's context, and carried explicitly to
    code that runs outside it (a worker process)."""

    tenant: str
    actor: str
    roles: tuple[str, ...]
    trace_id: str
    traceparent: str

    @classmethod
    def current(cls) -> Stamp:
        principal = current_principal()
        return cls(
            tenant=require_tenant(),
            actor=history.actor(),
            roles=tuple(principal.roles) if principal is not None else (),
            trace_id=audit.current_trace_id(),
            traceparent=outbox.current_traceparent(),
        )


class Writes:
    """The outbox, audit and history rows of one batch, inserted together at the end."""

    def __init__(self, stamp: Stamp | None = None) -> None:
        self.stamp = stamp or Stamp.current()
        self.events: list[dict[str, Any]] = []
        self.audits: list[dict[str, Any]] = []
        self.changes: list[dict[str, Any]] = []

    def event(self, type_: str, row: Contact, data: dict[str, Any]) -> None:
        stamp = self.stamp
        self.events.append(
            outbox.outbox_row(
                tenant=stamp.tenant, source=SOURCE, type=type_, subject=row.id, data=data, traceparent=stamp.traceparent
            )
        )

    def audit(self, action: str, row: Contact, before: Any, after: Any, *, plain: bool = False) -> None:
        """`plain`: `after` is JSON already (a message as a dict)."""
        stamp = self.stamp
        entry = audit.entry_row(
            action=action,
            entity="contact",
            entity_id=row.id,
            before=audit.jsonable(before) if before is not None else None,
            after=after if plain or after is None else audit.jsonable(after),
            actor=stamp.actor,
            roles=stamp.roles,
            trace_id=stamp.trace_id,
        )
        self.audits.append({**entry, "tenant_id": stamp.tenant})

    def history(self, row: Contact, before: dict[str, Any], *, created: bool) -> None:
        rows = history.change_rows(row, before, created=created, actor=self.stamp.actor, now=utcnow())
        self.changes += [{**values, "tenant_id": self.stamp.tenant} for values in rows]

    async def flush(self, session: AsyncSession) -> None:
        await insert_side_rows(session, self.events, self.audits, self.changes)
        self.events, self.audits, self.changes = [], [], []


async def insert_side_rows(
    session: AsyncSession,
    events: Sequence[dict[str, Any]],
    audits: Sequence[dict[str, Any]],
    changes: Sequence[dict[str, Any]],
) -> None:
    """The outbox, audit and history rows of a batch (the relay is woken when the transaction commits)."""
    if events:
        await session.execute(insert(_table(OutboxMessage)), events)
        outbox.wake_relays_on_commit(session)
    if audits:
        await session.execute(insert(_table(audit.AuditEntry)), audits)
    if changes:
        await session.execute(insert(_table(ContactFieldChange)), changes)


@dataclass
class Created:
    """Everything one created contact writes, built ahead of its transaction."""

    number: int  # the file's row
    contact: dict[str, Any]
    tags: list[dict[str, str]] = field(default_factory=list)
    keys: list[dict[str, str]] = field(default_factory=list)
    index: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)


def build_creates(plans: Sequence[Plan], catalog: Catalog, companies: dict[str, str], stamp: Stamp) -> list[Created]:
    """The rows of the contacts `plans` create (all creates), one `Created` per plan, in order."""
    if not plans:
        return []
    rows, tags, keys = bulk.contact_rows(stamp.tenant, [p.values for p in plans], companies)
    types = {key: d.type for key, d in catalog.by_key.items()}
    tags_of: dict[str, list[dict[str, str]]] = {}
    keys_of: dict[str, list[dict[str, str]]] = {}
    for t in tags:
        tags_of.setdefault(t["contact_id"], []).append(t)
    for k in keys:
        keys_of.setdefault(k["contact_id"], []).append(k)
    out: list[Created] = []
    for plan, values in zip(plans, rows, strict=True):
        writes = Writes(stamp)
        row: Any = Snapshot(values)
        record = to_dict(contact_message(row))
        writes.event(CREATED, row, {"contact": record})
        writes.audit(audit.CREATE, row, None, record, plain=True)
        writes.history(row, {}, created=True)
        index = []
        if row.custom_fields:
            index = custom_fields.index_rows(stamp.tenant, custom_fields.CONTACT, row.id, row.custom_fields, types)
        out.append(
            Created(
                plan.number,
                values,
                tags_of.get(row.id, []),
                keys_of.get(row.id, []),
                index,
                writes.events,
                writes.audits,
                writes.changes,
            )
        )
    return out


async def write_creates(session: AsyncSession, created: Sequence[Created]) -> int:
    """Insert what `build_creates` built, one statement per table."""
    if not created:
        return 0
    await bulk.write_contact_rows(
        session,
        [c.contact for c in created],
        [t for c in created for t in c.tags],
        [k for c in created for k in c.keys],
    )
    index = [r for c in created for r in c.index]
    if index:
        await session.execute(insert(_table(CustomFieldValue)), index)
    await insert_side_rows(
        session,
        [e for c in created for e in c.events],
        [a for c in created for a in c.audits],
        [h for c in created for h in c.changes],
    )
    return len(created)


async def fresh_rows(session: AsyncSession, ids: Sequence[str]) -> dict[str, Contact]:
    """The contacts to update, locked for this transaction (PostgreSQL)."""
    rows: dict[str, Contact] = {}
    for start in range(0, len(ids), 500):
        stmt = select(Contact).where(Contact.id.in_(ids[start : start + 500])).with_for_update()
        stmt = stmt.execution_options(populate_existing=True)
        rows.update({r.id: r for r in (await session.execute(stmt)).scalars()})
    return rows


async def versions(session: AsyncSession, ids: Sequence[str]) -> dict[str, int]:
    """The current versions of contacts a batch leaves unchanged (one narrow query per 500)."""
    out: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        stmt = select(Contact.id, Contact.version).where(Contact.id.in_(ids[start : start + 500]))
        out.update({str(i): int(v) for i, v in (await session.execute(stmt)).all()})
    return out


async def update(session: AsyncSession, plans: Sequence[Plan], writes: Writes) -> None:
    """Apply updates planned against the rows in `plans` (`plan.target` is the row of this session)."""
    if not plans:
        return
    now = utcnow()
    for p in plans:
        row = p.target
        assert row is not None
        for key, value in p.values.items():
            setattr(row, key, value)
        row.version += 1
        row.update_time = now
    await session.flush()
    for p in plans:
        row = p.target
        assert row is not None
        writes.event(UPDATED, row, {"contact": to_dict(contact_message(row)), "changed": sorted(p.before)})
        writes.audit(audit.UPDATE, row, p.before, {k: getattr(row, k) for k in p.before})
        writes.history(row, p.before, created=False)
    await writes.flush(session)
