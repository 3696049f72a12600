"""crm.servicedesk.v1.ServicedeskService."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2
from sqlalchemy import ColumnElement

from crm.servicedesk.v1 import servicedesk_pb2, servicedesk_pb2_grpc
from crm_kit.contacts import ContactVerifier
from crm_kit.crud import ResourceStore
from crm_kit.db import Database
from crm_kit.protos import mask_paths, to_message
from crm_servicedesk import rules
from crm_servicedesk.models import Ticket


def ticket_message(row: Ticket) -> servicedesk_pb2.Ticket:
    return to_message(row, servicedesk_pb2.Ticket)


class ServicedeskServicer(servicedesk_pb2_grpc.ServicedeskServiceServicer):
    def __init__(self, db: Database, contacts: ContactVerifier) -> None:
        self.db = db
        self.contacts = contacts
        self.tickets = ResourceStore(Ticket, context="servicedesk", entity="ticket", to_message=ticket_message)

    async def CreateTicket(
        self, request: servicedesk_pb2.CreateTicketRequest, context: grpc.aio.ServicerContext
    ) -> servicedesk_pb2.Ticket:
        values = rules.ticket_values(request.ticket, rules.TICKET_FIELDS)
        await self.contacts.verify(values["contact_id"])
        async with self.db.transaction() as session:
            row = await self.tickets.create(session, values)
        return ticket_message(row)

    async def GetTicket(
        self, request: servicedesk_pb2.GetTicketRequest, context: grpc.aio.ServicerContext
    ) -> servicedesk_pb2.Ticket:
        async with self.db.transaction() as session:
            return ticket_message(await self.tickets.get(session, request.id))

    async def UpdateTicket(
        self, request: servicedesk_pb2.UpdateTicketRequest, context: grpc.aio.ServicerContext
    ) -> servicedesk_pb2.Ticket:
        paths = mask_paths(request.update_mask, rules.TICKET_FIELDS)
        values = rules.ticket_values(request.ticket, paths)
        if "contact_id" in values:
            await self.contacts.verify_change(self.tickets, request.ticket.id, values["contact_id"])
        async with self.db.transaction() as session:
            row, _ = await self.tickets.update(session, request.ticket.id, values, request.ticket.version)
        return ticket_message(row)

    async def DeleteTicket(
        self, request: servicedesk_pb2.DeleteTicketRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        async with self.db.transaction() as session:
            await self.tickets.delete(session, request.id, request.version)
        return empty_pb2.Empty()

    async def ListTickets(
        self, request: servicedesk_pb2.ListTicketsRequest, context: grpc.aio.ServicerContext
    ) -> servicedesk_pb2.ListTicketsResponse:
        filters = rules.list_filters(request)
        where: list[ColumnElement[bool]] = [getattr(Ticket, name) == value for name, value in filters.items() if value]
        async with self.db.transaction() as session:
            rows, token = await self.tickets.list(
                session, where=where, filters=filters, page_size=request.page_size, page_token=request.page_token
            )
        return servicedesk_pb2.ListTicketsResponse(tickets=[ticket_message(r) for r in rows], next_page_token=token)
