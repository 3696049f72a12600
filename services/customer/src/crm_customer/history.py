"""The recorded history of a contact's owner, classification and lifecycle stage: one
`contact_field_history` row per change (and one per field when the contact is created), written in the
same transaction as the change, with who made it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

import crm_kit.pagination as pagination
from crm.customer.v1 import customer_pb2
from crm_customer.models import Base, Contact
from crm_kit import audit
from crm_kit.db.base import TenantScoped, UtcDateTime, utcnow
from crm_kit.db.ids import uuid7
from crm_kit.errors import InvalidArgument

TRACKED = ("owner_id", "classification", "lifecycle_stage")


class ContactFieldChange(Base, TenantScoped):
    __tablename__ = "contact_field_history"
    __table_args__ = (Index("ix_contact_field_history_tenant_id_contact_id_id", "tenant_id", "contact_id", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=uuid7)  # time-ordered
    contact_id: Mapped[str] = mapped_column(String(36), nullable=False)
    field: Mapped[str] = mapped_column(String(32), nullable=False)
    old_value: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    new_value: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    actor: Mapped[str] = mapped_column(String(128), nullable=False)
    change_time: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, default=utcnow)


def actor() -> str:
    return audit.actor_name()


def change_rows(
    row: Any, before: Mapping[str, Any], *, created: bool, actor: str, now: datetime
) -> list[dict[str, Any]]:
    """The history rows of one write (without tenant): for a create every tracked field with a value, for an
    update the tracked fields in `before` ({field: previous value}, as ResourceStore.update returns it)."""
    out: list[dict[str, Any]] = []
    for field in TRACKED:
        if created:
            old, new = "", str(getattr(row, field))
            if not new:
                continue
        elif field in before:
            old, new = str(before[field] or ""), str(getattr(row, field))
        else:
            continue
        out.append(
            {
                "id": uuid7(),
                "contact_id": row.id,
                "field": field,
                "old_value": old[:255],
                "new_value": new[:255],
                "actor": actor,
                "change_time": now,
            }
        )
    return out


def record(session: AsyncSession, row: Contact, before: Mapping[str, Any], *, created: bool = False) -> None:
    """Add the history rows of one write to the session (see `change_rows`)."""
    for values in change_rows(row, before, created=created, actor=actor(), now=utcnow()):
        session.add(ContactFieldChange(**values))


def change_message(row: ContactFieldChange) -> customer_pb2.ContactFieldChange:
    msg = customer_pb2.ContactFieldChange(
        id=row.id,
        contact_id=row.contact_id,
        field=row.field,
        old_value=row.old_value,
        new_value=row.new_value,
        actor=row.actor,
    )
    msg.change_time.FromDatetime(row.change_time)
    return msg


async def list_changes(
    session: AsyncSession, request: customer_pb2.ListContactHistoryRequest
) -> tuple[list[ContactFieldChange], str]:
    """A page of one contact's changes, newest first (the caller has checked the contact is visible)."""
    field = request.field.strip()
    if field and field not in TRACKED:
        raise InvalidArgument.field("field", f"must be one of: {', '.join(TRACKED)}")
    filters = {"contact_id": request.contact_id, "field": field}
    size = pagination.page_size(request.page_size)
    after = pagination.decode_token(request.page_token, filters)
    stmt = select(ContactFieldChange).where(ContactFieldChange.contact_id == request.contact_id)
    if field:
        stmt = stmt.where(ContactFieldChange.field == field)
    if after:
        stmt = stmt.where(ContactFieldChange.id < after)
    stmt = stmt.order_by(ContactFieldChange.id.desc()).limit(size + 1)
    rows = list((await session.execute(stmt)).scalars())
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        token = pagination.encode_token(rows[-1].id, filters)
    return rows, token
