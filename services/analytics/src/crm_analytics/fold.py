"""Folding one event into the read model: the handler of the `analytics` consumer, and of a rebuild.

Rules:
- Every event counts in the tenant's `events_processed` and moves `as_of` forward to its time (the newest
  event time wins, so order does not matter).
- Events about an entity the read model does not track are counted as ignored and change nothing else.
- An event about a tracked entity carries the resource as of its `version` (`data.<entity>`). It is applied
  only if it is newer than the stored projection: versions order the states, and at the same version a
  deletion wins (a `deleted` event carries the version it deleted). Created, updated and any other action
  (stage_changed, won, lost, ...) upsert; deleted leaves a tombstone.
- Events about an erased contact (`crm_kit.privacy.is_erased`) are ignored: the `analytics-privacy`
  consumer deleted its view, and neither a late delivery nor a rebuild brings it back.
- A tracked entity's event whose payload cannot be read raises `MalformedPayload`, so the consumer retries
  it and finally keeps it as a dead letter for an operator, rather than silently losing a change.

Everything here runs inside the event's tenant scope, in the transaction that also writes the inbox row.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_analytics.models import (
    AccountView,
    CampaignView,
    ContactView,
    OpportunityView,
    Projection,
    TenantStats,
    TicketView,
)
from crm_kit.events.envelope import SUBJECT_PREFIX, Event, InvalidSubject, parse_type
from crm_kit.privacy import is_erased

log = logging.getLogger(__name__)

CONSUMER = "analytics"  # the durable consumer, and the name its inbox rows carry
ALL_EVENTS = f"{SUBJECT_PREFIX}.>"  # every tenant, every context

DELETED = "deleted"
# Actions whose payload must be a resource; other actions of a tracked entity are applied when they carry
# one and ignored when they do not.
DOCUMENTED_ACTIONS = frozenset({"created", "updated", DELETED, "stage_changed", "won", "lost"})
MAX_ID = 64


class MalformedPayload(ValueError):
    """A tracked event's data cannot be applied (missing resource, bad version or amount, ...)."""


class Outcome(enum.Enum):
    APPLIED = "applied"
    STALE = "stale"  # not newer than what the read model holds
    IGNORED = "ignored"  # not something the read model tracks


def _text(resource: dict[str, Any], name: str, max_length: int) -> str:
    value = resource.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedPayload(f"{name!r} must be a string")
    if len(value) > max_length:
        raise MalformedPayload(f"{name!r} is longer than {max_length} characters")
    return value


def decimal_text(value: Any) -> str:
    """A decimal string as the read model stores it ("" is zero); raises `MalformedPayload` otherwise."""
    if value is None or value == "":
        return "0"
    if not isinstance(value, str):  # a JSON number would already have been through a float
        raise MalformedPayload("'amount' must be a decimal string")
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise MalformedPayload(f"'amount' is not a decimal: {value!r}") from None
    if not amount.is_finite():
        raise MalformedPayload(f"'amount' is not a finite decimal: {value!r}")
    text = format(amount, "f")
    if len(text) > 64:
        raise MalformedPayload("'amount' is too long")
    return text


def _opportunity(row: Projection, resource: dict[str, Any]) -> None:
    assert isinstance(row, OpportunityView)
    row.stage = _text(resource, "stage", 100)
    row.status = _text(resource, "status", 32)
    row.amount = decimal_text(resource.get("amount"))
    row.currency = _text(resource, "currency", 8)


def _ticket(row: Projection, resource: dict[str, Any]) -> None:
    assert isinstance(row, TicketView)
    row.priority = _text(resource, "priority", 32)
    row.status = _text(resource, "status", 32)


def _campaign(row: Projection, resource: dict[str, Any]) -> None:
    assert isinstance(row, CampaignView)
    row.status = _text(resource, "status", 32)


def _nothing(row: Projection, resource: dict[str, Any]) -> None:
    """Contacts and accounts are only counted: existence is all the read model keeps."""


# (context, entity) -> (projection, copies the fields the summaries use)
TRACKED: dict[tuple[str, str], tuple[type[Projection], Callable[[Projection, dict[str, Any]], None]]] = {
    ("customer", "contact"): (ContactView, _nothing),
    ("customer", "account"): (AccountView, _nothing),
    ("sales", "opportunity"): (OpportunityView, _opportunity),
    ("servicedesk", "ticket"): (TicketView, _ticket),
    ("marketing", "campaign"): (CampaignView, _campaign),
}


def _version(resource: dict[str, Any]) -> int:
    value = resource.get("version")
    if isinstance(value, str) and value.isdigit():  # proto JSON renders 64-bit integers as strings
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MalformedPayload(f"'version' must be a positive integer, got {value!r}")
    return value


def _resource_id(event: Event, resource: dict[str, Any]) -> str:
    value = resource.get("id") or event.subject
    if not isinstance(value, str) or not value or len(value) > MAX_ID:
        raise MalformedPayload(f"'id' must be a non-empty string of at most {MAX_ID} characters")
    if event.subject and event.subject != value:
        raise MalformedPayload(f"event subject {event.subject!r} is not the resource id {value!r}")
    return value


async def _stats(session: AsyncSession) -> TenantStats:
    """The tenant's stats row, locked (PostgreSQL) so events of one tenant fold one at a time."""
    stats = (await session.execute(select(TenantStats).with_for_update())).scalar_one_or_none()
    if stats is None:
        stats = TenantStats(events_processed=0, events_ignored=0, as_of=None)
        session.add(stats)
    return stats


async def _project(session: AsyncSession, event: Event) -> Outcome:
    try:
        context, entity, action = parse_type(event.type)
    except InvalidSubject:
        return Outcome.IGNORED
    tracked = TRACKED.get((context, entity))
    if tracked is None:
        return Outcome.IGNORED
    model, copy_fields = tracked
    resource = event.data.get(entity)
    if not isinstance(resource, dict):
        if action in DOCUMENTED_ACTIONS:
            raise MalformedPayload(f"{event.type} {event.id}: data.{entity} must be an object")
        return Outcome.IGNORED
    try:
        id_ = _resource_id(event, resource)
        if model is ContactView and await is_erased(session, id_):
            return Outcome.IGNORED  # erased (crm_kit.privacy): a replay must not bring the person back
        version = _version(resource)
        deleted = action == DELETED
        row = (await session.execute(select(model).where(model.id == id_).with_for_update())).scalar_one_or_none()
        if row is not None and (row.version, row.deleted) >= (version, deleted):
            return Outcome.STALE
        if row is None:
            row = model(id=id_)  # type: ignore[call-arg]
            session.add(row)
        row.version = version
        row.deleted = deleted
        if not deleted:
            copy_fields(row, resource)
    except MalformedPayload as exc:
        raise MalformedPayload(f"{event.type} {event.id}: {exc}") from None
    return Outcome.APPLIED


async def fold(session: AsyncSession, event: Event) -> Outcome:
    """Apply `event` to the read model of the tenant in context; see the module's rules."""
    stats = await _stats(session)
    outcome = await _project(session, event)
    stats.events_processed += 1
    if outcome is Outcome.IGNORED:
        stats.events_ignored += 1
    if stats.as_of is None or event.time > stats.as_of:
        stats.as_of = event.time
    await session.flush()
    log.debug("folded %s %s: %s", event.type, event.id, outcome.value)
    return outcome


async def handle(session: AsyncSession, event: Event) -> None:
    """The `analytics` subscription's handler (`crm_kit.runtime.Handler`)."""
    await fold(session, event)
