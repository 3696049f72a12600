"""crm.customer.v1.CustomerService."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2
from sqlalchemy import ColumnElement, String, cast, func, or_

from crm.customer.v1 import customer_pb2, customer_pb2_grpc
from crm_customer import rules
from crm_customer.models import Account, Contact
from crm_kit.crud import ResourceStore
from crm_kit.db import Database
from crm_kit.errors import InvalidArgument
from crm_kit.protos import mask_paths, to_message


def contact_message(row: Contact) -> customer_pb2.Contact:
    return to_message(row, customer_pb2.Contact)


def account_message(row: Account) -> customer_pb2.Account:
    return to_message(row, customer_pb2.Account)


def _text_search(q: str, *columns: Any) -> ColumnElement[bool]:
    needle = f"%{q.strip().lower()}%"
    return or_(*(func.lower(c).like(needle) for c in columns))


class CustomerServicer(customer_pb2_grpc.CustomerServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db
        self.contacts = ResourceStore(Contact, context="customer", entity="contact", to_message=contact_message)
        self.accounts = ResourceStore(Account, context="customer", entity="account", to_message=account_message)

    # contacts

    async def CreateContact(
        self, request: customer_pb2.CreateContactRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.Contact:
        values = rules.contact_values(request.contact, rules.CONTACT_FIELDS)
        async with self.db.transaction() as session:
            row = await self.contacts.create(session, values)
        return contact_message(row)

    async def GetContact(
        self, request: customer_pb2.GetContactRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.Contact:
        async with self.db.transaction() as session:
            return contact_message(await self.contacts.get(session, request.id))

    async def UpdateContact(
        self, request: customer_pb2.UpdateContactRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.Contact:
        paths = mask_paths(request.update_mask, rules.CONTACT_FIELDS)
        values = rules.contact_values(request.contact, paths)
        async with self.db.transaction() as session:
            row, _ = await self.contacts.update(session, request.contact.id, values, request.contact.version)
            if not (row.first_name or row.last_name):
                raise InvalidArgument.field("last_name", "a contact needs a first or a last name")
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
        filters = {
            "owner_id": request.owner_id,
            "account_id": request.account_id,
            "tag": request.tag.strip(),
            "q": request.q.strip(),
        }
        where: list[ColumnElement[bool]] = []
        if request.owner_id:
            where.append(Contact.owner_id == request.owner_id)
        if request.account_id:
            where.append(Contact.account_id == request.account_id)
        if filters["tag"]:
            where.append(cast(Contact.tags, String).contains(f'"{filters["tag"]}"'))
        if filters["q"]:
            where.append(
                _text_search(filters["q"], Contact.first_name, Contact.last_name, Contact.email, Contact.phone)
            )
        async with self.db.transaction() as session:
            rows, token = await self.contacts.list(
                session, where=where, filters=filters, page_size=request.page_size, page_token=request.page_token
            )
        return customer_pb2.ListContactsResponse(contacts=[contact_message(r) for r in rows], next_page_token=token)

    # accounts

    async def CreateAccount(
        self, request: customer_pb2.CreateAccountRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.Account:
        values = rules.account_values(request.account, rules.ACCOUNT_FIELDS)
        async with self.db.transaction() as session:
            row = await self.accounts.create(session, values)
        return account_message(row)

    async def GetAccount(
        self, request: customer_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.Account:
        async with self.db.transaction() as session:
            return account_message(await self.accounts.get(session, request.id))

    async def UpdateAccount(
        self, request: customer_pb2.UpdateAccountRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.Account:
        paths = mask_paths(request.update_mask, rules.ACCOUNT_FIELDS)
        values = rules.account_values(request.account, paths)
        async with self.db.transaction() as session:
            row, _ = await self.accounts.update(session, request.account.id, values, request.account.version)
        return account_message(row)

    async def DeleteAccount(
        self, request: customer_pb2.DeleteAccountRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        async with self.db.transaction() as session:
            await self.accounts.delete(session, request.id, request.version)
        return empty_pb2.Empty()

    async def ListAccounts(
        self, request: customer_pb2.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> customer_pb2.ListAccountsResponse:
        filters = {"industry": request.industry.strip(), "q": request.q.strip()}
        where: list[ColumnElement[bool]] = []
        if filters["industry"]:
            where.append(Account.industry == filters["industry"])
        if filters["q"]:
            where.append(_text_search(filters["q"], Account.name, Account.website))
        async with self.db.transaction() as session:
            rows, token = await self.accounts.list(
                session, where=where, filters=filters, page_size=request.page_size, page_token=request.page_token
            )
        return customer_pb2.ListAccountsResponse(accounts=[account_message(r) for r in rows], next_page_token=token)
