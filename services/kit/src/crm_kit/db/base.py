"""Declarative bases and the mixins that make a table tenant-scoped and versioned."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from crm_kit.db.ids import uuid7

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def make_base() -> Any:
    """Each service gets its own metadata, so in-process tests can host several services at once.

    Typed as Any because mypy cannot take a class returned by a function as a base class."""

    class Base(DeclarativeBase):
        metadata = MetaData(naming_convention=NAMING)

    return Base


class SystemBase(DeclarativeBase):
    """The kit's own tables (outbox, inbox, dead letters), created by each service's first migration."""

    metadata = MetaData(naming_convention=NAMING)


class TenantScoped:
    """Marks a table as tenant data: the ORM guard filters it, and PostgreSQL row-level security covers it."""

    tenant_id: Mapped[str] = mapped_column(String(64), nullable=False, index=True)


class Resource(TenantScoped):
    """A tenant-scoped, versioned resource with a UUIDv7 id and UTC timestamps."""

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=uuid7)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, default=utcnow)
