"""The customer database: contacts and accounts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, ColumnElement, Integer, String, Text, and_
from sqlalchemy.orm import Mapped, mapped_column

from crm_customer.names import display_name
from crm_kit.db import Resource, make_base

Base: Any = make_base()


class Account(Base, Resource):
    __tablename__ = "accounts"

    name: Mapped[str] = mapped_column(String(255), nullable=False)
    industry: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    website: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    phone: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    owner_id: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    classification: Mapped[str] = mapped_column(String(16), nullable=False, default="general")
    tags: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    address: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    # Not stored: how many contacts belong to the account, set by crm_customer.record.count_contacts.
    contact_count = 0
    # The tenant's custom fields by key (crm_customer.custom_fields keeps the typed index in step).
    custom_fields: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)


class Contact(Base, Resource):
    __tablename__ = "contacts"

    # Every index is led by tenant_id (see the migrations): a lone tenant_id or column index would only be
    # written on every insert, never read (every query is scoped to one tenant).
    tenant_id: Mapped[str] = mapped_column(String(64), nullable=False)
    first_name: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    last_name: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    email: Mapped[str] = mapped_column(String(320), nullable=False, default="")
    phone: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    account_id: Mapped[str] = mapped_column(String(36), nullable=False, default="")
    owner_id: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    # The tenant's custom fields by key (crm_customer.custom_fields keeps the typed index in step).
    custom_fields: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    gender: Mapped[str] = mapped_column(String(16), nullable=False, default="unknown")
    birthday: Mapped[str] = mapped_column(String(10), nullable=False, default="")
    job_title: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    department: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    # Lists of {type, number|address|..., primary} as crm_customer.contact_points validates them.
    phones: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    emails: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    addresses: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    social_accounts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    preferences: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    interests: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    source: Mapped[str] = mapped_column(String(50), nullable=False, default="")
    classification: Mapped[str] = mapped_column(String(16), nullable=False, default="general")
    lifecycle_stage: Mapped[str] = mapped_column(String(16), nullable=False, default="lead")
    # Unique per tenant when not empty (a partial unique index).
    external_id: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    # The full-text document (crm_customer.indexing keeps it, its FTS5 rows on SQLite and contact_tags in
    # step on every ORM write; PostgreSQL derives search_vector from it).
    search_text: Mapped[str] = mapped_column(Text, nullable=False, default="")
    # SQLite only: the contact's rowid in contacts_fts (stable across VACUUM, unlike the implicit rowid).
    search_rowid: Mapped[int | None] = mapped_column(Integer, nullable=True)

    @property
    def display_name(self) -> str:
        return display_name(self.first_name, self.last_name)


def external_id_in(*values: str) -> ColumnElement[bool]:
    """Contacts whose external_id is one of `values` (none empty). The `<> ''` term is the unique index's
    own condition: without it SQLite cannot use that partial index and reads every contact."""
    column = Contact.external_id
    match = column == values[0] if len(values) == 1 else column.in_(values)
    return and_(match, column != "")
