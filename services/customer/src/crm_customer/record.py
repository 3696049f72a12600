"""The customer record around the plain columns: rows as messages (typed lists, display name, the account's
contact count), and the checks a write needs from the database (the account exists in the tenant, the
external id is free)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm.customer.v1 import customer_pb2
from crm_customer.models import Account, Contact, external_id_in
from crm_kit.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument

_LISTS: dict[str, Any] = {
    "phones": customer_pb2.ContactPhone,
    "emails": customer_pb2.ContactEmail,
    "addresses": customer_pb2.Address,
    "social_accounts": customer_pb2.SocialAccount,
    "preferences": customer_pb2.Preference,
}


def _fields_of(cls: Any, entry: Mapping[str, Any]) -> dict[str, Any]:
    known = cls.DESCRIPTOR.fields_by_name
    return {k: v for k, v in entry.items() if k in known}


def contact_overrides(row: Contact) -> dict[str, Any]:
    """Values for `crm_kit.protos.to_message(row, Contact, **overrides)` beyond the plain columns."""
    out: dict[str, Any] = {
        name: [cls(**_fields_of(cls, e)) for e in (getattr(row, name) or ())] for name, cls in _LISTS.items()
    }
    out["display_name"] = row.display_name
    return out


def fill_account(message: customer_pb2.Account, row: Account) -> customer_pb2.Account:
    """The parts of an Account message `to_message(row, Account, address=None)` leaves out."""
    if row.address:
        message.address.CopyFrom(customer_pb2.Address(**_fields_of(customer_pb2.Address, row.address)))
    message.contact_count = int(getattr(row, "contact_count", 0) or 0)
    return message


async def contact_counts(session: AsyncSession, account_ids: Iterable[str]) -> dict[str, int]:
    ids = [i for i in dict.fromkeys(account_ids) if i]
    if not ids:
        return {}
    stmt = select(Contact.account_id, func.count()).where(Contact.account_id.in_(ids)).group_by(Contact.account_id)
    return {str(a): int(n) for a, n in (await session.execute(stmt)).all()}


async def count_contacts(session: AsyncSession, rows: Iterable[Account]) -> None:
    """Set `contact_count` on account rows (a plain attribute the messages read)."""
    rows = list(rows)
    counts = await contact_counts(session, (r.id for r in rows))
    for row in rows:
        row.contact_count = counts.get(row.id, 0)


async def check_contact_refs(session: AsyncSession, values: Mapping[str, Any], contact_id: str = "") -> None:
    """`account_id` names an account of the tenant; `external_id` is not another contact's."""
    account_id = values.get("account_id") or ""
    if account_id:
        found = await session.scalar(select(Account.id).where(Account.id == account_id))
        if found is None:
            raise InvalidArgument.field("account_id", f"account {account_id!r} does not exist")
    external_id = values.get("external_id") or ""
    if external_id:
        stmt = select(Contact.id).where(external_id_in(external_id))
        if contact_id:
            stmt = stmt.where(Contact.id != contact_id)
        other = await session.scalar(stmt.limit(1))
        if other is not None:
            raise external_id_taken(external_id)


def external_id_taken(external_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"external_id {external_id!r} is already used by another contact",
        [FieldViolation("external_id", "is already used by another contact")],
    )


async def check_account_unused(session: AsyncSession, account_id: str) -> None:
    """An account with contacts is not deleted: its contacts would point nowhere."""
    count = (await contact_counts(session, [account_id])).get(account_id, 0)
    if count:
        raise FailedPrecondition(
            f"account {account_id!r} has {count} contact(s); move or delete them first",
            [FieldViolation("id", f"the account has {count} contact(s)")],
        )
