"""The audit log: who changed what, when, and the values before and after.

Every create, update and delete through `ResourceStore` writes an `audit_log` row in the same transaction
as the change (so there is never a change without its entry, nor an entry for a change rolled back).
Features that change data another way (merge, erase, import...) call `record_audit` themselves.

The log is append-only. No code path updates or deletes entries; on PostgreSQL the application role has
neither UPDATE nor DELETE on the table (`crm_kit.db.migrations.create_audit_table`), and on SQLite
triggers refuse both. The one exception is `redact_audit`, which erasure uses to blank personal data in
`before`/`after` while keeping who, when and what: on PostgreSQL it runs through a SECURITY DEFINER
function that can do nothing else.

Entries are tenant data (row-level security, the tenant guard). The actor is the principal's subject, or
"system:<consumer>" inside an event consumer (`crm_kit.context.acting_as`), or "system".
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from opentelemetry import trace
from sqlalchemy import JSON, Index, MetaData, String, bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from crm_kit.context import current_actor, current_principal
from crm_kit.db.base import NAMING, TenantScoped, UtcDateTime, utcnow
from crm_kit.db.ids import uuid7

TABLE = "audit_log"
SYSTEM_ACTOR = "system"
REDACTED = "[erased]"
REDACT_FUNCTION = "audit_log_redact"

# Actions ResourceStore writes; features add their own (merge, unmerge, erase, import, ...).
CREATE = "create"
UPDATE = "update"
DELETE = "delete"


class AuditBase(DeclarativeBase):
    """The audit log's own metadata: a kit table, but tenant data (unlike the outbox)."""

    metadata = MetaData(naming_convention=NAMING)


class AuditEntry(AuditBase, TenantScoped):
    __tablename__ = TABLE
    __table_args__ = (
        Index("ix_audit_log_tenant_id_entity_entity_id_id", "tenant_id", "entity", "entity_id", "id"),
        Index("ix_audit_log_tenant_id_actor_id", "tenant_id", "actor", "id"),
        Index("ix_audit_log_tenant_id_time", "tenant_id", "time"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=uuid7)  # time-ordered
    time: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128), nullable=False)
    actor_roles: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    entity: Mapped[str] = mapped_column(String(64), nullable=False)
    entity_id: Mapped[str] = mapped_column(String(64), nullable=False)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    trace_id: Mapped[str] = mapped_column(String(32), nullable=False, default="")


def jsonable(value: Any) -> Any:
    """A stored value as JSON: timestamps as RFC 3339 text, decimals as text, containers recursively."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Iterable):
        return [jsonable(v) for v in value]
    return str(value)


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def actor_name() -> str:
    """Who acts: the caller, else the actor the code runs as (a consumer), else the system."""
    principal = current_principal()
    if principal is not None and principal.subject:
        return principal.subject[:128]
    return (current_actor() or SYSTEM_ACTOR)[:128]


def entry_row(
    *,
    action: str,
    entity: str,
    entity_id: str,
    before: Any,
    after: Any,
    actor: str,
    roles: Iterable[str],
    trace_id: str,
) -> dict[str, Any]:
    """An audit entry as column values, `before`/`after` JSON already (for a bulk insert, with a tenant_id;
    `record_audit` adds one)."""
    return {
        "id": uuid7(),
        "time": utcnow(),
        "actor": actor[:128],
        "actor_roles": list(roles),
        "action": action,
        "entity": entity,
        "entity_id": entity_id,
        "before": before,
        "after": after,
        "trace_id": trace_id,
    }


async def record_audit(
    session: AsyncSession,
    *,
    action: str,
    entity: str,
    entity_id: str,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    actor: str | None = None,
) -> AuditEntry:
    """Add an audit entry to the caller's transaction (nothing is committed here).

    `before`/`after` hold the changed fields' old and new values (the full record after a create, before
    a delete); values are converted to JSON. The actor defaults to the caller (see the module docstring),
    the tenant is the one in context (the tenant guard raises without one)."""
    principal = current_principal()
    entry = AuditEntry(
        **entry_row(
            action=action,
            entity=entity,
            entity_id=entity_id,
            before=jsonable(before) if before is not None else None,
            after=jsonable(after) if after is not None else None,
            actor=actor if actor is not None else actor_name(),
            roles=principal.roles if principal is not None else (),
            trace_id=current_trace_id(),
        )
    )
    session.add(entry)
    return entry


def _redacted(document: dict[str, Any] | None, fields: set[str] | None) -> dict[str, Any] | None:
    if document is None:
        return None
    return {k: (REDACTED if fields is None or k in fields else v) for k, v in document.items()}


async def redact_audit(
    session: AsyncSession, *, entity: str, entity_id: str, fields: Iterable[str] | None = None
) -> int:
    """Blank the values in `before`/`after` of every entry about one record (erasure of personal data);
    who, when, what and which fields changed stay. `fields` limits it to those fields (e.g. a copy of a
    contact's name kept on an opportunity). Returns the number of entries touched."""
    names = sorted(set(fields)) if fields is not None else None
    if session.get_bind().dialect.name == "postgresql":
        result = await session.execute(
            text(f"SELECT {REDACT_FUNCTION}(:entity, :entity_id, :fields)").bindparams(
                bindparam("fields", type_=_text_array())
            ),
            {"entity": entity, "entity_id": entity_id, "fields": names},
        )
        return int(result.scalar_one())
    wanted = set(names) if names is not None else None
    stmt = select(AuditEntry).where(AuditEntry.entity == entity, AuditEntry.entity_id == entity_id)
    count = 0
    for entry in (await session.execute(stmt)).scalars():
        await session.execute(
            update(AuditEntry)
            .where(AuditEntry.id == entry.id)
            .values(before=_redacted(entry.before, wanted), after=_redacted(entry.after, wanted))
            .execution_options(synchronize_session=False)
        )
        count += 1
    return count


def _text_array() -> Any:
    from sqlalchemy.dialects.postgresql import ARRAY

    return ARRAY(String())


__all__ = [
    "CREATE",
    "DELETE",
    "UPDATE",
    "AuditEntry",
    "jsonable",
    "record_audit",
    "redact_audit",
]
