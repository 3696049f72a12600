"""The analytics database: read models folded from every service's events.

Each projection row mirrors one resource of another service, keyed by (tenant_id, id), and keeps only what
the summaries need plus the resource `version` it was last built from, so an event is applied only when it
is newer (events may arrive out of order or more than once). A deletion leaves a tombstone with the version
it deleted, so an older `created`/`updated` that arrives late cannot bring the resource back.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit.db import TenantScoped, make_base
from crm_kit.db.base import UtcDateTime

if TYPE_CHECKING:  # mypy cannot subclass a variable; to it the base is what make_base() builds on
    from sqlalchemy.orm import DeclarativeBase as Base
else:
    Base = make_base()


class Projection(TenantScoped):
    """A resource of another service, as of `version`. `deleted` marks a tombstone."""

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class ContactView(Base, Projection):
    __tablename__ = "contact_views"


class AccountView(Base, Projection):
    __tablename__ = "account_views"


class OpportunityView(Base, Projection):
    __tablename__ = "opportunity_views"
    __table_args__ = (Index("ix_opportunity_views_tenant_id_status", "tenant_id", "status"),)

    stage: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    status: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    # A canonical decimal string: SQLite has no exact decimal type, and sums are done with Decimal.
    amount: Mapped[str] = mapped_column(String(64), nullable=False, default="0")
    currency: Mapped[str] = mapped_column(String(8), nullable=False, default="")


class TicketView(Base, Projection):
    __tablename__ = "ticket_views"
    __table_args__ = (Index("ix_ticket_views_tenant_id_status", "tenant_id", "status"),)

    priority: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    status: Mapped[str] = mapped_column(String(32), nullable=False, default="")


class CampaignView(Base, Projection):
    __tablename__ = "campaign_views"
    __table_args__ = (Index("ix_campaign_views_tenant_id_status", "tenant_id", "status"),)

    status: Mapped[str] = mapped_column(String(32), nullable=False, default="")


class TenantStats(Base, TenantScoped):
    """Per tenant: how many events were folded (ignored ones included) and the newest event time."""

    __tablename__ = "tenant_stats"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    events_processed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Of those, events whose type the read model does not use (counted, otherwise ignored).
    events_ignored: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    as_of: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


# What a rebuild empties: every table of this metadata (the kit's system tables have their own).
READ_MODEL_TABLES: tuple[str, ...] = tuple(Base.metadata.tables)
