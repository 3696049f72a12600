"""Validation and normalisation of tickets on every write, and of list filters.

Defaults: priority normal, status new, channel web.
"""

from __future__ import annotations

from typing import Any

from crm.servicedesk.v1 import servicedesk_pb2
from crm_kit import validation
from crm_kit.errors import Violations

TICKET_FIELDS = ("contact_id", "subject", "description", "priority", "status", "channel")
PRIORITIES = ("low", "normal", "high", "urgent")
STATUSES = ("new", "open", "pending", "resolved", "closed")
CHANNELS = ("email", "phone", "web", "chat", "social", "walk_in")
DESCRIPTION_MAX = 10_000


def ticket_values(msg: servicedesk_pb2.Ticket, fields: tuple[str, ...] | list[str]) -> dict[str, Any]:
    v = Violations()
    out: dict[str, Any] = {}
    for name in fields:
        if name == "contact_id":
            out[name] = validation.reference(v, name, msg.contact_id)
        elif name == "subject":
            out[name] = validation.text(v, name, msg.subject, required=True)
        elif name == "description":
            out[name] = validation.text(v, name, msg.description, max_length=DESCRIPTION_MAX)
        elif name == "priority":
            out[name] = validation.one_of(v, name, msg.priority, PRIORITIES, default="normal")
        elif name == "status":
            out[name] = validation.one_of(v, name, msg.status, STATUSES, default="new")
        elif name == "channel":
            out[name] = validation.one_of(v, name, msg.channel, CHANNELS, default="web")
    v.raise_if_any()
    return out


def list_filters(request: servicedesk_pb2.ListTicketsRequest) -> dict[str, str]:
    v = Violations()
    filters = {
        "status": request.status.strip().lower(),
        "priority": request.priority.strip().lower(),
        "contact_id": request.contact_id.strip(),
    }
    if filters["status"]:
        validation.one_of(v, "status", filters["status"], STATUSES)
    if filters["priority"]:
        validation.one_of(v, "priority", filters["priority"], PRIORITIES)
    v.raise_if_any()
    return filters
