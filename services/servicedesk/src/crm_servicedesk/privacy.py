"""What servicedesk holds about a person (crm_kit.privacy): the contact's tickets, whose subject and
description are free text written about them (and often name them), and the contact reference. Erasure
redacts the tickets' text (the ticket stays for the statistics, linked to the contact's tombstone id) and
deletes the reference."""

from __future__ import annotations

from crm_kit.crud import ResourceStore
from crm_kit.privacy import Holding, Mentions, PersonalData
from crm_servicedesk.models import ContactRef, Ticket
from crm_servicedesk.servicer import ticket_message

REDACTED_SUBJECT = "[erased]"

# Emits the PII-free `updated` event of each redacted ticket.
TICKETS = ResourceStore(Ticket, context="servicedesk", entity="ticket", to_message=ticket_message)

PERSONAL_DATA = PersonalData(
    "servicedesk",
    [
        Holding(
            Ticket,
            "tickets",
            anonymise={"subject": REDACTED_SUBJECT, "description": ""},
            audit_entity="ticket",
            store=TICKETS,
        ),
        Holding(ContactRef, "contact_ref", single=True, pii=("display_name",)),
        # Other people's tickets quoting the person (by email, phone or full name) in their text.
        Mentions(Ticket, "ticket_mentions", ("subject", "description"), store=TICKETS, link="contact_id"),
    ],
)
