"""The transactional outbox: an event is a row written in the same transaction as the change it describes,
so either both happen or neither does. The relay (`crm_kit.events.relay`) publishes the rows afterwards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import propagate
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from crm_kit.context import require_tenant
from crm_kit.db.base import utcnow
from crm_kit.db.ids import uuid7
from crm_kit.db.system_tables import PENDING, OutboxMessage
from crm_kit.events.envelope import Event

# Called after any transaction that recorded an event commits, so a relay in this process publishes at
# once instead of at its next poll. Relays register themselves while they run.
_commit_listeners: list[Callable[[], None]] = []


def add_commit_listener(callback: Callable[[], None]) -> None:
    if callback not in _commit_listeners:
        _commit_listeners.append(callback)


def remove_commit_listener(callback: Callable[[], None]) -> None:
    if callback in _commit_listeners:
        _commit_listeners.remove(callback)


def notify_relays() -> None:
    """Events were committed (by this process, or by a worker process it waits for): publish them now."""
    for callback in list(_commit_listeners):
        callback()


def _after_commit(session: Session) -> None:
    notify_relays()


def current_traceparent() -> str:
    """The W3C traceparent of the current OpenTelemetry context, or "" outside any span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


def outbox_row(
    *, tenant: str, source: str, type: str, subject: str, data: dict[str, Any], traceparent: str
) -> dict[str, Any]:
    """The outbox row of one new event, as column values (for a bulk insert; `record_event` adds one)."""
    event = Event(
        id=uuid7(),
        source=source,
        type=type,
        subject=subject,
        time=utcnow(),
        tenant_id=tenant,
        data=data,
        traceparent=traceparent,
    )
    return row_of(event)


def row_of(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "tenant_id": event.tenant_id,
        "subject": event.nats_subject,  # validates the type and the tenant id
        "type": event.type,
        "payload": event.to_json().decode("utf-8"),
        "traceparent": event.traceparent,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": event.time,
        "created_at": event.time,
        "sent_at": None,
        "last_error": "",
    }


def wake_relays_on_commit(session: AsyncSession) -> None:
    """Publish at once when the session's transaction commits, not at the relay's next poll."""
    sync_session = session.sync_session
    if not sa_event.contains(sync_session, "after_commit", _after_commit):
        sa_event.listen(sync_session, "after_commit", _after_commit)


async def record_event(
    session: AsyncSession,
    *,
    source: str,
    type: str,
    subject: str,
    data: dict[str, Any],
) -> Event:
    """Add an event about resource `subject` to the caller's transaction (nothing is committed here).

    `source` names the producer (e.g. `crm/customer`), `type` is `crm.<context>.<entity>.<action>`.
    The tenant is the one in context; raises `NoTenantError` without one.
    """
    event = Event(
        id=uuid7(),
        source=source,
        type=type,
        subject=subject,
        time=utcnow(),
        tenant_id=require_tenant(),
        data=data,
        traceparent=current_traceparent(),
    )
    session.add(OutboxMessage(**row_of(event)))
    wake_relays_on_commit(session)
    return event
