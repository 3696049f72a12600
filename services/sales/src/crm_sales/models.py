"""The sales database: opportunities, and the contacts projection learned from customer events."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit.contacts import ContactRefMixin
from crm_kit.db import Resource, make_base

# Typed as Any: mypy cannot follow a class made at run time (make_base gives each service its own metadata).
Base: Any = make_base()


class Opportunity(Base, Resource):
    __tablename__ = "opportunities"

    contact_id: Mapped[str] = mapped_column(String(36), nullable=False, default="", index=True)
    # A copy of the contact's display name, maintained from customer events (crm_kit.contacts).
    contact_name: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    # Exact decimal text ("12500.00"): SQLite has no exact decimal type.
    amount: Mapped[str] = mapped_column(String(32), nullable=False, default="0.00")
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    stage: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    # Derived from the stage on every write, stored so lists can filter on it.
    status: Mapped[str] = mapped_column(String(8), nullable=False, index=True)
    expected_close_date: Mapped[str] = mapped_column(String(10), nullable=False, default="")
    owner_id: Mapped[str] = mapped_column(String(64), nullable=False, default="", index=True)


class ContactRef(Base, ContactRefMixin):
    pass
