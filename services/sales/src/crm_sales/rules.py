"""Validation and normalisation of opportunities on every write, and of list filters.

Defaults: an empty currency is CNY, an empty stage is the pipeline's first stage, an empty owner is the
caller. `status` is never taken from the caller: it follows from the stage.
"""

from __future__ import annotations

from typing import Any

from crm.sales.v1 import sales_pb2
from crm_kit import validation
from crm_kit.context import current_principal
from crm_kit.errors import Violations
from crm_sales.pipeline import STATUSES, Pipeline

OPPORTUNITY_FIELDS = ("contact_id", "name", "amount", "currency", "stage", "expected_close_date", "owner_id")
DEFAULT_CURRENCY = "CNY"


def opportunity_values(
    msg: sales_pb2.Opportunity, fields: tuple[str, ...] | list[str], pipeline: Pipeline
) -> dict[str, Any]:
    v = Violations()
    out: dict[str, Any] = {}
    for name in fields:
        if name in ("contact_id", "owner_id"):
            out[name] = validation.reference(v, name, getattr(msg, name))
        elif name == "name":
            out[name] = validation.text(v, name, msg.name, required=True)
        elif name == "amount":
            out[name] = validation.decimal_string(v, name, msg.amount)
        elif name == "currency":
            out[name] = validation.currency(v, name, msg.currency, default=DEFAULT_CURRENCY)
        elif name == "stage":
            out[name] = validation.one_of(v, name, msg.stage, pipeline.keys, default=pipeline.first.key)
        elif name == "expected_close_date":
            out[name] = validation.iso_date(v, name, msg.expected_close_date)
    v.raise_if_any()
    if "owner_id" in out and not out["owner_id"]:
        principal = current_principal()
        out["owner_id"] = principal.subject if principal else ""
    if "stage" in out:
        out["status"] = pipeline.stage(out["stage"]).status
    return out


def list_filters(request: sales_pb2.ListOpportunitiesRequest, pipeline: Pipeline) -> dict[str, str]:
    v = Violations()
    filters = {
        "stage": request.stage.strip().lower(),
        "owner_id": request.owner_id.strip(),
        "contact_id": request.contact_id.strip(),
        "status": request.status.strip().lower(),
    }
    if filters["stage"]:
        validation.one_of(v, "stage", filters["stage"], pipeline.keys)
    if filters["status"]:
        validation.one_of(v, "status", filters["status"], STATUSES)
    v.raise_if_any()
    return filters
