"""Rebuilding the read model from the event stream.

`rebuild` empties the read-model tables and the `analytics` consumer's inbox rows, then replays every event
still in the stream with an ephemeral pull consumer (deliver all), folding each exactly as the live
consumer does and writing the inbox row under the live consumer's name in the same transaction. So the live
`analytics` consumer may keep running: an event it applies during the rebuild is skipped by the replay, and
an event the replay applied is skipped by it when its own delivery comes.

A rebuild can only restore what the stream still holds. The stream drops events older than its `max_age`;
if its first events are gone, `rebuild` refuses (`IncompleteStream`) unless `allow_incomplete=True`.

Run it with the migration (owner) database URL: on PostgreSQL the tables are emptied with TRUNCATE, which
row-level security does not confine but which the application role may not run.

Operators run it as `crm-analytics rebuild [--allow-incomplete]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import delete, text
from sqlalchemy.exc import IntegrityError

from crm_analytics.fold import ALL_EVENTS, CONSUMER, MalformedPayload, fold
from crm_analytics.models import READ_MODEL_TABLES
from crm_kit.context import tenant_scope
from crm_kit.db import Database
from crm_kit.db.base import utcnow
from crm_kit.db.system_tables import InboxEntry
from crm_kit.events.bus import EventBus
from crm_kit.events.envelope import Event, MalformedEvent
from crm_kit.events.stream import DEFAULT_STREAM
from crm_kit.settings import KitSettings, ServiceSettings

log = logging.getLogger("crm_analytics.rebuild")

ATTEMPTS = 3  # per event, against races with the live consumer (unique-key conflicts)


class IncompleteStream(RuntimeError):
    """The stream no longer holds its first events, so a rebuild would lose what they created."""


@dataclass
class RebuildResult:
    applied: int = 0  # events folded by the rebuild
    duplicates: int = 0  # already in the inbox: applied by the live consumer meanwhile, or in the stream twice
    failed: int = 0  # malformed events or payloads (the live consumer keeps them as dead letters)
    last_sequence: int = 0  # the last stream sequence replayed


async def clear(db: Database, consumer: str = CONSUMER) -> None:
    """Empty the read model of every tenant and forget which events `consumer` applied, in one transaction."""
    async with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            tables = ", ".join(conn.dialect.identifier_preparer.quote(t) for t in READ_MODEL_TABLES)
            await conn.execute(text(f"TRUNCATE TABLE {tables}"))
        else:
            for table in READ_MODEL_TABLES:
                await conn.execute(text(f'DELETE FROM "{table}"'))
        inbox: Any = InboxEntry.__table__
        await conn.execute(delete(inbox).where(inbox.c.consumer == consumer))


async def apply_once(db: Database, consumer: str, event: Event) -> bool:
    """Fold `event` and record it in `consumer`'s inbox in one transaction, as `EventConsumer` does; False
    if the inbox already has it."""
    with tenant_scope(event.tenant_id):
        async with db.transaction() as session:
            if await session.get(InboxEntry, (consumer, event.id)) is not None:
                return False
            session.add(
                InboxEntry(consumer=consumer, event_id=event.id, tenant_id=event.tenant_id, processed_at=utcnow())
            )
            await session.flush()
            await fold(session, event)
    return True


async def _replay(db: Database, consumer: str, msg: Msg, result: RebuildResult) -> None:
    try:
        event = Event.from_json(msg.data)
    except MalformedEvent as exc:
        log.warning("rebuild: skipping malformed event on %s: %s", msg.subject, exc)
        result.failed += 1
        return
    for attempt in range(1, ATTEMPTS + 1):
        try:
            applied = await apply_once(db, consumer, event)
        except MalformedPayload as exc:
            log.warning("rebuild: skipping event %s: %s", event.id, exc)
            result.failed += 1
            return
        except IntegrityError:
            if attempt == ATTEMPTS:
                raise
            continue  # the live consumer inserted the same row first; the next attempt sees it
        if applied:
            result.applied += 1
        else:
            result.duplicates += 1
        return


async def rebuild(
    db: Database,
    bus: EventBus,
    stream: str = DEFAULT_STREAM,
    *,
    consumer: str = CONSUMER,
    subjects: Sequence[str] = (ALL_EVENTS,),
    allow_incomplete: bool = False,
    batch: int = 256,
    fetch_timeout: float = 1.0,
) -> RebuildResult:
    """Empty the read model and fold every event of `stream` again; see the module docstring."""
    js = bus.js
    state = (await js.stream_info(stream)).state
    if state.first_seq > 1 and not allow_incomplete:
        raise IncompleteStream(
            f"stream {stream} no longer holds events 1..{state.first_seq - 1} (expired or purged); "
            "a rebuild would lose what they recorded (allow_incomplete to rebuild from what is left)"
        )
    await clear(db, consumer)
    result = RebuildResult()
    target = state.last_seq  # later events reach the live consumer anyway
    log.info("rebuild: replaying %s messages of %s up to sequence %s", state.messages, stream, target)
    if state.messages == 0:
        return result
    config = ConsumerConfig(
        name=f"{consumer}-rebuild-{uuid.uuid4().hex[:12]}",
        description=f"one-off replay rebuilding the {consumer} read model",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.ALL,
        ack_wait=60.0,
        inactive_threshold=300.0,
        mem_storage=True,
        num_replicas=1,
    )
    if len(subjects) == 1:
        config.filter_subject = subjects[0]
    else:
        config.filter_subjects = list(subjects)
    await js.add_consumer(stream, config)
    psub = await js.pull_subscribe_bind(consumer=config.name, stream=stream)
    try:
        while True:
            try:
                messages = await psub.fetch(batch, timeout=fetch_timeout)
            except TimeoutError:
                messages = []
            for msg in messages:
                await _replay(db, consumer, msg, result)
                result.last_sequence = max(result.last_sequence, msg.metadata.sequence.stream)
            if messages:
                await messages[-1].ack_sync()  # AckPolicy.ALL: acknowledges the whole batch
                if result.last_sequence >= target:
                    break
            if not messages or messages[-1].metadata.num_pending == 0:
                info = await psub.consumer_info()
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    break
    finally:
        try:
            await psub.unsubscribe()
            await js.delete_consumer(stream, str(config.name))
        except Exception as exc:  # it expires after inactive_threshold anyway
            log.debug("rebuild: removing the replay consumer failed: %s", exc)
    log.info("rebuild: %s", asdict(result))
    return result


async def run(settings: ServiceSettings, kit: KitSettings, *, allow_incomplete: bool = False) -> RebuildResult:
    """A rebuild as an operator runs it: the owner database URL (see the module docstring), the kit's stream."""
    db = Database(settings.migration_database_url or settings.database_url)
    try:
        bus = await EventBus.connect(kit.nats_servers, name="analytics-rebuild", timeout=30)
        try:
            return await rebuild(db, bus, kit.events_stream, allow_incomplete=allow_incomplete)
        finally:
            await bus.close()
    finally:
        await db.dispose()


# -- the command line: `crm-analytics rebuild` once the kit's CLI takes extra commands -------------------


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-incomplete", action="store_true", help="rebuild even if the stream's first events expired"
    )


async def command(args: argparse.Namespace, settings: ServiceSettings, kit: KitSettings) -> None:
    try:
        result = await run(settings, kit, allow_incomplete=args.allow_incomplete)
    except IncompleteStream as exc:
        raise SystemExit(f"analytics: {exc}") from None
    print(json.dumps({"rebuilt": asdict(result)}))
