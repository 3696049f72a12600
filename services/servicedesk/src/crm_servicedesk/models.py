"""The servicedesk database: tickets, and the contacts projection learned from customer events."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit.contacts import ContactRefMixin
from crm_kit.db import Resource, make_base

# Typed as Any: mypy cannot follow a class made at run time (make_base gives each service its own metadata).
Base: Any = make_base()


class Ticket(Base, Resource):
    __tablename__ = "tickets"

    contact_id: Mapped[str] = mapped_column(String(36), nullable=False, default="", index=True)
    subject: Mapped[str] = mapped_column(String(255), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    priority: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    channel: Mapped[str] = mapped_column(String(16), nullable=False)


class ContactRef(Base, ContactRefMixin):
    pass
