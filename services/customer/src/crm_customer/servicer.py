"""crm.customer.v1.CustomerService."""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.protobuf import empty_pb2
from sqlalchemy import ColumnElement, String, cast, func, or_
from sqlalchemy.exc import IntegrityError

from crm.customer.v1 import customer_pb2, customer_pb2_grpc
from crm_customer import custom_field_search, custom_fields, dedupe, history, record, rules, search, settings
from crm_customer.models import Account, Contact
from crm_kit import validation
from crm_kit.context import ADMIN, current_principal
from crm_kit.crud import ResourceStore
from crm_kit.db import Database
from crm_kit.errors import InvalidArgument, Violations
from crm_kit.protos import to_message


def contact_message(row: Contact) -> customer_pb2.Contact:
    message = to_message(row, customer_pb2.Contact, custom_fields=None, **record.contact_overrides(row))
    custom_fields.fill(message.custom_fields, row.custom_fields)
    return message


def account_message(row: Account) -> customer_pb2.Account:
    message = to_message(row, customer_pb2.Account, custom_fields=None, address=None, contact_count=None)
    record.fill_account(message, row)
    custom_fields.fill(message.custom_fields, row.custom_fields)
    return message


def _is_admin() -> bool:
    principal = current_principal()
    return principal is None or principal.has_role(ADMIN)


def _text_search(q: str, *columns: Any) -> ColumnElement[bool]:
    needle = f"%{q.strip().lower()}%"
    return or_(*(func.lower(c).like(needle) for c in columns))


class CustomerServicer(customer_pb2_grpc.CustomerServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db
        # Members see and change only the contacts and accounts they own (crm_kit.access).
        self.contacts = ResourceStore(
            Contact, context="customer", entity="contact", to_message=contact_message, owner_field="owner_id"
        )
        self.accounts = ResourceStore(
            Account, context="customer", entity="account", to_message=account_message, owner_field="owner_id"
        )

    # contacts

    async def CreateContact(
        self, request: customer_pb2.CreateContactRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.Contact:
        try:
            async with self.db.transaction() as session:
                cfg = await settings.get_settings(session)
                values = await custom_fields.validated(
                    session,
                    custom_fields.CONTACT,
                    lambda: rules.contact_values(request.contact, rules.CONTACT_FIELDS, cfg),
                    request.contact.custom_fields,
                )
                await record.check_contact_refs(session, values)
                candidates = await dedupe.check_new_contact(
                    session,
                    values,
                    threshold=cfg.duplicate_threshold,
                    block=cfg.duplicate_policy == settings.BLOCK,
                    allow_duplicate=request.allow_duplicate and _is_admin(),
                    visible=self.contacts.visible(),
                )
                row = await self.contacts.create(session, values)
                history.record(session, row, {}, created=True)
        except IntegrityError:  # a concurrent write took the external id after the check
            raise record.external_id_taken(request.contact.external_id.strip()) from None
        message = contact_message(row)
        message.duplicate_candidates.extend(candidates)
        return message

    async def GetContact(
        self, request: customer_pb2.GetContactRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.Contact:
        async with self.db.transaction() as session:
            return contact_message(await self.contacts.get(session, request.id))

    async def UpdateContact(
        self, request: customer_pb2.UpdateContactRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.Contact:
        paths, custom_mask = custom_fields.update_paths(request.update_mask, rules.CONTACT_FIELDS)
        try:
            async with self.db.transaction() as session:
                cfg = await settings.get_settings(session)
                current = await self.contacts.get(session, request.contact.id)
                values = await custom_fields.validated(
                    session,
                    custom_fields.CONTACT,
                    lambda: rules.contact_values(request.contact, paths, cfg, current),
                    request.contact.custom_fields,
                    mask=custom_mask,
                    current=current.custom_fields,
                )
                await record.check_contact_refs(session, values, contact_id=current.id)
                row, before = await self.contacts.update(session, request.contact.id, values, request.contact.version)
                history.record(session, row, before)
        except IntegrityError:  # a concurrent write took the external id after the check
            raise record.external_id_taken(request.contact.external_id.strip()) from None
        return contact_message(row)

    async def DeleteContact(
        self, request: customer_pb2.DeleteContactRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        async with self.db.transaction() as session:
            await self.contacts.delete(session, request.id, request.version)
        return empty_pb2.Empty()

    async def ListContacts(
        self, request: customer_pb2.ListContactsRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.ListContactsResponse:
        async with self.db.transaction() as session:
            rows, token = await search.list_contacts(session, request, current_principal())
        return customer_pb2.ListContactsResponse(contacts=[contact_message(r) for r in rows], next_page_token=token)

    async def ListContactHistory(
        self, request: customer_pb2.ListContactHistoryRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.ListContactHistoryResponse:
        if not request.contact_id.strip():
            raise InvalidArgument.field("contact_id", "is required")
        async with self.db.transaction() as session:
            await self.contacts.get(session, request.contact_id)  # NOT_FOUND: another tenant's or owner's too
            rows, token = await history.list_changes(session, request)
        return customer_pb2.ListContactHistoryResponse(
            changes=[history.change_message(r) for r in rows], next_page_token=token
        )

    # accounts

    async def CreateAccount(
        self, request: customer_pb2.CreateAccountRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.Account:
        async with self.db.transaction() as session:
            cfg = await settings.get_settings(session)
            values = await custom_fields.validated(
                session,
                custom_fields.ACCOUNT,
                lambda: rules.account_values(request.account, rules.ACCOUNT_FIELDS, cfg),
                request.account.custom_fields,
            )
            row = await self.accounts.create(session, values)
        return account_message(row)

    async def GetAccount(
        self, request: customer_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.Account:
        async with self.db.transaction() as session:
            row = await self.accounts.get(session, request.id)
            await record.count_contacts(session, [row])
            return account_message(row)

    async def UpdateAccount(
        self, request: customer_pb2.UpdateAccountRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.Account:
        paths, custom_mask = custom_fields.update_paths(request.update_mask, rules.ACCOUNT_FIELDS)
        async with self.db.transaction() as session:
            cfg = await settings.get_settings(session)
            current = await self.accounts.get(session, request.account.id)
            await record.count_contacts(session, [current])  # the updated event carries the count
            values = await custom_fields.validated(
                session,
                custom_fields.ACCOUNT,
                lambda: rules.account_values(request.account, paths, cfg),
                request.account.custom_fields,
                mask=custom_mask,
                current=current.custom_fields,
            )
            row, _ = await self.accounts.update(session, request.account.id, values, request.account.version)
        return account_message(row)

    async def DeleteAccount(
        self, request: customer_pb2.DeleteAccountRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        async with self.db.transaction() as session:
            await self.accounts.get(session, request.id)  # NOT_FOUND before anything else
            await record.check_account_unused(session, request.id)
            await self.accounts.delete(session, request.id, request.version)
        return empty_pb2.Empty()

    async def ListAccounts(
        self, request: customer_pb2.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.ListAccountsResponse:
        filters: dict[str, Any] = {
            "industry": request.industry.strip(),
            "q": request.q.strip(),
            "custom_filter": list(request.custom_filter),
            "owner_id": request.owner_id.strip(),
            "classification": request.classification.strip().lower(),
            "tag": " ".join(request.tag.split()),
        }
        v = Violations()
        validation.reference(v, "owner_id", filters["owner_id"])
        if filters["classification"] and filters["classification"] not in rules.CLASSIFICATIONS:
            v.add("classification", f"must be one of: {', '.join(rules.CLASSIFICATIONS)}")
        v.raise_if_any()
        where: list[ColumnElement[bool]] = []
        if filters["industry"]:
            where.append(Account.industry == filters["industry"])
        if filters["q"]:
            where.append(_text_search(filters["q"], Account.name, Account.website))
        if filters["owner_id"]:
            where.append(Account.owner_id == filters["owner_id"])
        if filters["classification"]:
            where.append(Account.classification == filters["classification"])
        if filters["tag"]:
            # Tags are stored as a JSON array written by json.dumps (the same escaping as this needle).
            where.append(cast(Account.tags, String).contains(json.dumps(filters["tag"]), autoescape=True))
        async with self.db.transaction() as session:
            where += await custom_field_search.filter_clauses(session, custom_fields.ACCOUNT, request.custom_filter)
            rows, token = await self.accounts.list(
                session, where=where, filters=filters, page_size=request.page_size, page_token=request.page_token
            )
            await record.count_contacts(session, rows)
        return customer_pb2.ListAccountsResponse(accounts=[account_message(r) for r in rows], next_page_token=token)

    # settings

    async def GetCustomerSettings(
        self, request: customer_pb2.GetCustomerSettingsRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.CustomerSettings:
        settings.require_admin()
        async with self.db.transaction() as session:
            return (await settings.get_settings(session)).to_message()

    async def UpdateCustomerSettings(
        self, request: customer_pb2.UpdateCustomerSettingsRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.CustomerSettings:
        settings.require_admin()
        async with self.db.transaction() as session:
            return (await settings.update_settings(session, request)).to_message()
