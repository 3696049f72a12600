"""Keeps the search structures of contacts true inside the flush that changes a contact, so every ORM write
(the servicer, merge, erase, import) maintains them in its own transaction:

- `contacts.search_text`, the document of crm_customer.search_document (name, emails, phones, company);
  SQLite triggers (migration 0002) copy it into the FTS5 trigram table `contacts_fts`, and PostgreSQL
  derives the generated column `search_vector` from it;
- `contacts.search_rowid` (SQLite): the contact's row in `contacts_fts`;
- `contact_tags`: one row per tag, so tag filters are index lookups.

Renaming an account rewrites the documents of its contacts. Writers that bypass the ORM (bulk loads) build
the same values with `document_for` and `tag_rows` and insert `contact_tags` themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Index, String, bindparam, delete, event, insert, literal_column, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Mapper, attributes, mapped_column

from crm_customer.models import Account, Base, Contact
from crm_customer.search_document import contact_document
from crm_kit.db import TenantScoped

# What the document is built from.
DOCUMENT_FIELDS = ("first_name", "last_name", "email", "phone", "emails", "phones", "account_id")
NEXT_SEARCH_ROWID = "(SELECT coalesce(max(search_rowid), 0) + 1 FROM contacts)"


class ContactTag(Base, TenantScoped):
    __tablename__ = "contact_tags"
    __table_args__ = (Index("ix_contact_tags_tenant_id_contact_id", "tenant_id", "contact_id"),)

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tag: Mapped[str] = mapped_column(String(50), primary_key=True)
    contact_id: Mapped[str] = mapped_column(String(36), primary_key=True)


def document_for(values: Mapping[str, Any], company: str) -> str:
    """The document of a contact given its column values."""
    emails = [e["address"] for e in values.get("emails") or () if e.get("address")]
    phones = [p["number"] for p in values.get("phones") or () if p.get("number")]
    if values.get("email") and values["email"] not in emails:
        emails.insert(0, values["email"])
    if values.get("phone") and values["phone"] not in phones:
        phones.insert(0, values["phone"])
    return contact_document(
        first_name=values.get("first_name") or "",
        last_name=values.get("last_name") or "",
        emails=emails,
        phones=phones,
        company=company,
    )


def tag_rows(tenant_id: str, contact_id: str, tags: Iterable[str]) -> list[dict[str, str]]:
    return [{"tenant_id": tenant_id, "tag": t, "contact_id": contact_id} for t in dict.fromkeys(tags)]


def _values(target: Contact) -> dict[str, Any]:
    return {name: getattr(target, name) for name in DOCUMENT_FIELDS}


def _company(connection: Connection, tenant_id: str, account_id: str) -> str:
    if not account_id:
        return ""
    table = Account.__table__
    stmt = select(table.c.name).where(table.c.tenant_id == tenant_id, table.c.id == account_id)
    return str(connection.execute(stmt).scalar() or "")


def _changed(target: Any, names: Sequence[str]) -> bool:
    state = attributes.instance_state(target)
    return any(state.attrs[name].history.has_changes() for name in names)


def _tags_table() -> Any:
    return ContactTag.__table__


def _write_tags(connection: Connection, target: Contact, *, replace: bool) -> None:
    table = _tags_table()
    if replace:
        connection.execute(delete(table).where(table.c.tenant_id == target.tenant_id, table.c.contact_id == target.id))
    rows = tag_rows(target.tenant_id, target.id, target.tags or ())
    if rows:
        connection.execute(insert(table), rows)


@event.listens_for(Contact, "before_insert")
def _before_insert(mapper: Mapper[Any], connection: Connection, target: Contact) -> None:
    target.search_text = document_for(_values(target), _company(connection, target.tenant_id, target.account_id))
    if connection.dialect.name == "sqlite" and target.search_rowid is None:
        target.search_rowid = literal_column(NEXT_SEARCH_ROWID)  # type: ignore[assignment]


@event.listens_for(Contact, "after_insert")
def _after_insert(mapper: Mapper[Any], connection: Connection, target: Contact) -> None:
    if connection.dialect.name == "sqlite" and "search_rowid" not in target.__dict__:
        # Assigned inside the INSERT (atomic under SQLite's single writer); read back so the row stays loaded.
        table = Contact.__table__
        rowid = connection.execute(select(table.c.search_rowid).where(table.c.id == target.id)).scalar()
        attributes.set_committed_value(target, "search_rowid", rowid)
    _write_tags(connection, target, replace=False)


@event.listens_for(Contact, "before_update")
def _before_update(mapper: Mapper[Any], connection: Connection, target: Contact) -> None:
    if _changed(target, DOCUMENT_FIELDS):
        company = _company(connection, target.tenant_id, target.account_id)
        document = document_for(_values(target), company)
        if document != target.search_text:
            target.search_text = document


@event.listens_for(Contact, "after_update")
def _after_update(mapper: Mapper[Any], connection: Connection, target: Contact) -> None:
    if _changed(target, ("tags",)):
        _write_tags(connection, target, replace=True)


@event.listens_for(Contact, "after_delete")
def _after_delete(mapper: Mapper[Any], connection: Connection, target: Contact) -> None:
    table = _tags_table()
    connection.execute(delete(table).where(table.c.tenant_id == target.tenant_id, table.c.contact_id == target.id))


@event.listens_for(Account, "after_update")
def _account_renamed(mapper: Mapper[Any], connection: Connection, target: Account) -> None:
    if not _changed(target, ("name",)):
        return
    refresh_account_contacts(connection, target.tenant_id, target.id, target.name)


def refresh_account_contacts(connection: Connection, tenant_id: str, account_id: str, company: str) -> int:
    """Rewrite the documents of an account's contacts (after the account's name changed)."""
    table = Contact.__table__
    columns = [table.c.id, *(table.c[name] for name in DOCUMENT_FIELDS)]
    rows = connection.execute(
        select(*columns).where(table.c.tenant_id == tenant_id, table.c.account_id == account_id)
    ).mappings()
    changes = [{"_id": row["id"], "_text": document_for(dict(row), company)} for row in rows]
    if changes:
        connection.execute(
            update(table)
            .where(table.c.tenant_id == tenant_id, table.c.id == bindparam("_id"))
            .values(search_text=bindparam("_text")),
            changes,
        )
    return len(changes)
