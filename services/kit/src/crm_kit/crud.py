"""The resource life cycle every service repeats, written once: get, create, update with a field mask and
optimistic version, delete, and keyset-paginated lists; each change writes its event to the outbox and its
audit entry (`crm_kit.audit`) in the same transaction. With `owner_field`, members see and change only the
records they own (`crm_kit.access`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from sqlalchemy import ColumnElement, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from crm_kit import audit, pagination
from crm_kit.access import OwnerAccess
from crm_kit.db.base import Resource, utcnow
from crm_kit.errors import NotFound, StaleVersion
from crm_kit.events.outbox import record_event
from crm_kit.protos import to_dict

R = TypeVar("R", bound=Resource)


class ResourceStore(Generic[R]):
    def __init__(
        self,
        model: type[R],
        *,
        context: str,
        entity: str,
        to_message: Callable[[R], Message],
        owner_field: str | None = None,
        audited: bool = True,
    ) -> None:
        """`owner_field` (e.g. "owner_id") turns on record-level access by owner; `audited` writes an
        audit entry for every create, update and delete."""
        self.model = model
        self.context = context
        self.entity = entity
        self.to_message = to_message
        self.source = f"crm.{context}"
        self.access = OwnerAccess(owner_field) if owner_field else None
        self.audited = audited

    def visible(self) -> ColumnElement[bool]:
        """The where-clause limiting rows to those the caller may see (always true without owner access).
        Custom queries over this store's table must add it too."""
        return self.access.where(self.model) if self.access is not None else true()

    def record(self, row: R) -> dict[str, Any]:
        """The whole record as the API shows it (what the audit log keeps for a create or a delete)."""
        return to_dict(self.to_message(row))

    def event_type(self, action: str) -> str:
        return f"crm.{self.context}.{self.entity}.{action}"

    async def emit(self, session: AsyncSession, row: R, action: str, **extra: Any) -> None:
        data = {self.entity: to_dict(self.to_message(row)), **extra}
        await record_event(session, source=self.source, type=self.event_type(action), subject=row.id, data=data)

    async def get(self, session: AsyncSession, id_: str, *, for_update: bool = False) -> R:
        stmt = select(self.model).where(self.model.id == id_, self.visible())  # another owner's: NOT_FOUND
        if for_update:
            stmt = stmt.with_for_update()
        row = (await session.execute(stmt)).scalar_one_or_none()
        if row is None:
            raise NotFound(self.entity, id_)
        return row

    async def create(self, session: AsyncSession, values: dict[str, Any]) -> R:
        if self.access is not None:
            values = dict(values)
            self.access.on_create(values)
        row = self.model(**values)
        session.add(row)
        await session.flush()
        await self.emit(session, row, "created")
        if self.audited:
            await audit.record_audit(
                session, action=audit.CREATE, entity=self.entity, entity_id=row.id, after=self.record(row)
            )
        return row

    async def update(
        self, session: AsyncSession, id_: str, values: dict[str, Any], expected_version: int
    ) -> tuple[R, dict[str, Any]]:
        """Apply `values`; returns the row and {field: previous value} for what actually changed."""
        row = await self.get(session, id_, for_update=True)
        if self.access is not None:
            self.access.on_update(row, values)
        if expected_version and expected_version != row.version:
            raise StaleVersion(expected_version, row.version)
        before = {k: getattr(row, k) for k, v in values.items() if getattr(row, k) != v}
        if before:
            for key in before:
                setattr(row, key, values[key])
            row.version += 1
            row.update_time = utcnow()
            await session.flush()
            await self.emit(session, row, "updated", changed=sorted(before))
            if self.audited:
                await audit.record_audit(
                    session,
                    action=audit.UPDATE,
                    entity=self.entity,
                    entity_id=row.id,
                    before=before,
                    after={key: getattr(row, key) for key in before},
                )
        return row, before

    async def delete(self, session: AsyncSession, id_: str, expected_version: int) -> R:
        row = await self.get(session, id_, for_update=True)
        if expected_version and expected_version != row.version:
            raise StaleVersion(expected_version, row.version)
        await self.emit(session, row, "deleted")
        if self.audited:
            await audit.record_audit(
                session, action=audit.DELETE, entity=self.entity, entity_id=row.id, before=self.record(row)
            )
        await session.delete(row)
        await session.flush()
        return row

    async def list(
        self,
        session: AsyncSession,
        *,
        where: Sequence[ColumnElement[bool]],
        filters: dict[str, Any],
        page_size: int,
        page_token: str,
    ) -> tuple[list[R], str]:
        size = pagination.page_size(page_size)
        after = pagination.decode_token(page_token, filters)
        stmt = select(self.model).where(*where, self.visible())
        if after:
            stmt = stmt.where(self.model.id > after)
        stmt = stmt.order_by(self.model.id).limit(size + 1)
        rows = list((await session.execute(stmt)).scalars())
        next_token = ""
        if len(rows) > size:
            rows = rows[:size]
            next_token = pagination.encode_token(rows[-1].id, filters)
        return rows, next_token
