"""Validation and normalisation of campaigns on every write, and of list filters.

Defaults: an empty status is draft, an empty budget is 0.00, an empty currency is CNY.
"""

from __future__ import annotations

from typing import Any

from crm.marketing.v1 import marketing_pb2
from crm_kit import validation
from crm_kit.errors import Violations

CAMPAIGN_FIELDS = ("name", "channel", "budget", "currency", "status", "start_date", "end_date")
CHANNELS = ("email", "sms", "social", "event", "web")
STATUSES = ("draft", "scheduled", "active", "paused", "completed", "cancelled")
DEFAULT_CURRENCY = "CNY"


def check_dates(v: Violations, start_date: str, end_date: str) -> None:
    if start_date and end_date and end_date < start_date:
        v.add("end_date", "must not be before start_date")


def campaign_values(msg: marketing_pb2.Campaign, fields: tuple[str, ...] | list[str]) -> dict[str, Any]:
    v = Violations()
    out: dict[str, Any] = {}
    for name in fields:
        if name == "name":
            out[name] = validation.text(v, name, msg.name, required=True)
        elif name == "channel":
            if not msg.channel.strip():
                v.add(name, "is required")
                out[name] = ""
            else:
                out[name] = validation.one_of(v, name, msg.channel, CHANNELS)
        elif name == "budget":
            out[name] = validation.decimal_string(v, name, msg.budget)
        elif name == "currency":
            out[name] = validation.currency(v, name, msg.currency, default=DEFAULT_CURRENCY)
        elif name == "status":
            out[name] = validation.one_of(v, name, msg.status, STATUSES, default="draft")
        elif name in ("start_date", "end_date"):
            out[name] = validation.iso_date(v, name, getattr(msg, name))
    if not any(f.field in ("start_date", "end_date") for f in v.items):
        check_dates(v, out.get("start_date", ""), out.get("end_date", ""))
    v.raise_if_any()
    return out


def list_filters(request: marketing_pb2.ListCampaignsRequest) -> dict[str, str]:
    v = Violations()
    filters = {"status": request.status.strip().lower(), "channel": request.channel.strip().lower()}
    if filters["status"]:
        validation.one_of(v, "status", filters["status"], STATUSES)
    if filters["channel"]:
        validation.one_of(v, "channel", filters["channel"], CHANNELS)
    v.raise_if_any()
    return filters
