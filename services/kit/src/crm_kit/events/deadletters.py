"""Dead letters: messages a consumer gave up on. Operators list them and, once the cause is fixed, replay
them. A replay publishes the stored payload again to its subject; consumers that already applied the event
skip it (their inbox has it), the one that failed gets another go."""

from __future__ import annotations

import json
import logging

from sqlalchemy import select, update

from crm_kit.context import system_scope
from crm_kit.db.base import utcnow
from crm_kit.db.engine import Database
from crm_kit.db.system_tables import DeadLetter
from crm_kit.events.bus import EventBus
from crm_kit.events.envelope import CONTENT_TYPE
from crm_kit.events.relay import MSG_ID_HEADER

log = logging.getLogger(__name__)


class DeadLetterNotFound(LookupError):
    pass


async def list_dead_letters(
    db: Database, consumer: str | None = None, limit: int = 100, *, include_replayed: bool = True
) -> list[DeadLetter]:
    """Dead letters, oldest first, optionally of one consumer and only those not replayed yet."""
    query = select(DeadLetter).order_by(DeadLetter.created_at, DeadLetter.id).limit(max(1, min(limit, 10_000)))
    if consumer is not None:
        query = query.where(DeadLetter.consumer == consumer)
    if not include_replayed:
        query = query.where(DeadLetter.replayed_at.is_(None))
    with system_scope():
        async with db.transaction() as session:
            return list((await session.scalars(query)).all())


def replay_msg_id(dead_letter: DeadLetter) -> str:
    """A new message id, so JetStream's deduplication does not drop the replay as a repeat of the original
    (replaying the same dead letter twice within the duplicate window is still dropped, on purpose)."""
    return f"{dead_letter.event_id or 'malformed'}:replay:{dead_letter.id}"


async def replay(db: Database, bus: EventBus, dead_letter_id: str) -> None:
    """Publish the dead letter's payload to its subject again and mark it replayed."""
    with system_scope():
        async with db.transaction() as session:
            dead_letter = await session.get(DeadLetter, dead_letter_id)
    if dead_letter is None:
        raise DeadLetterNotFound(f"no dead letter {dead_letter_id!r}")
    headers = {MSG_ID_HEADER: replay_msg_id(dead_letter), "Content-Type": CONTENT_TYPE}
    traceparent = _traceparent(dead_letter.payload)
    if traceparent:
        headers["traceparent"] = traceparent
    ack = await bus.js.publish(dead_letter.subject, dead_letter.payload.encode("utf-8"), headers=headers)
    with system_scope():
        async with db.transaction() as session:
            await session.execute(
                update(DeadLetter)
                .where(DeadLetter.id == dead_letter.id)
                .values(replayed_at=utcnow())
                .execution_options(synchronize_session=False)
            )
    log.info(
        "replayed dead letter %s (event %s, consumer %s) as stream sequence %s%s",
        dead_letter.id,
        dead_letter.event_id,
        dead_letter.consumer,
        ack.seq,
        " (duplicate: already replayed)" if ack.duplicate else "",
    )


def _traceparent(payload: str) -> str:
    try:
        value = json.loads(payload).get("traceparent", "")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""
