"""Copies of a person's data outside the service's own tables: the kit's outbox and dead letters, and the
events already in the JetStream stream. Used by `crm_kit.privacy` when a contact is erased.

- Outbox and dead-letter rows mentioning the contact's id are deleted: the service emits fresh, PII-free
  events for whatever it anonymised, so nothing downstream misses the final state.
- Other rows carrying one of the person's identifying values (an email, a phone number, a full name) are
  deleted when already sent, or have those values replaced by "[erased]" (pending events, dead letters).
- The service's own earlier events mentioning the contact are deleted from the stream (JetStream's
  message delete overwrites the stored message), except `*.erased` events, which carry no personal data.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_kit.context import require_tenant
from crm_kit.db.system_tables import SENT, DeadLetter, OutboxMessage
from crm_kit.events.envelope import SUBJECT_PREFIX, check_tenant, dumps

log = logging.getLogger(__name__)

REDACTED = "[erased]"
MAX_TERM = 320  # longer values are text, not identifiers
MIN_DIGITS_OF_PHONE = 7


def identifying_terms(values: Iterable[Any]) -> set[str]:
    """The values worth looking for in copies of events: emails, phone numbers and full names (a name with
    a space, or one written in a non-Latin script with three or more characters). Single short words are
    left out, so that erasing "Li" never rewrites other people's events."""
    terms: set[str] = set()
    for value in _strings(values):
        text = value.strip()
        if not text or len(text) > MAX_TERM:
            continue
        digits = sum(ch.isdigit() for ch in text)
        if (
            "@" in text
            or digits >= MIN_DIGITS_OF_PHONE
            or (" " in text and len(text) >= 5)
            or (not text.isascii() and len(text) >= 3)
        ):
            terms.add(text)
    return terms


def _strings(values: Iterable[Any]) -> Iterable[str]:
    for value in values:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            yield from _strings(value.values())
        elif isinstance(value, list | tuple | set):
            yield from _strings(value)


def needles(term: str) -> set[str]:
    """The term as it appears in plain text and inside JSON text (quotes and backslashes escaped, and
    non-ASCII characters escaped as the JSON columns store them)."""
    return {term, json.dumps(term, ensure_ascii=False)[1:-1], json.dumps(term)[1:-1]}


def redact_text(text: str, terms: Iterable[str]) -> str:
    for term in sorted(set(terms), key=len, reverse=True):
        for needle in needles(term):
            text = text.replace(needle, REDACTED)
    return text


def redact_json(document: str, terms: Iterable[str]) -> str:
    """Replace the terms inside every string (keys included) of a JSON document; plain text replacement if
    it is not JSON."""
    ordered = sorted(set(terms), key=len, reverse=True)
    try:
        parsed = json.loads(document)
    except ValueError:
        return redact_text(document, ordered)

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            for term in ordered:
                value = value.replace(term, REDACTED)
            return value
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {walk(k): walk(v) for k, v in value.items()}
        return value

    return dumps(walk(parsed))


@dataclass
class ScrubResult:
    outbox_deleted: int = 0
    outbox_redacted: int = 0
    dead_letters_deleted: int = 0
    dead_letters_redacted: int = 0


async def scrub_event_copies(session: AsyncSession, contact_id: str, terms: Iterable[str]) -> ScrubResult:
    """Delete or redact this tenant's outbox and dead-letter rows carrying the contact's data (see the
    module docstring). Runs in the caller's transaction and tenant; the kit tables are not tenant tables,
    so the tenant is named explicitly (row-level security confines it on PostgreSQL as well)."""
    tenant = require_tenant()
    strong = sorted(identifying_terms(terms), key=len, reverse=True)
    wanted = {contact_id} | {n for t in strong for n in needles(t)}
    result = ScrubResult()

    outbox = OutboxMessage.payload
    stmt = select(OutboxMessage).where(
        OutboxMessage.tenant_id == tenant, or_(*(outbox.contains(n, autoescape=True) for n in sorted(wanted)))
    )
    for row in (await session.execute(stmt)).scalars():
        if contact_id in row.payload or row.status == SENT:
            await session.delete(row)
            result.outbox_deleted += 1
        else:
            row.payload = redact_json(row.payload, strong)
            result.outbox_redacted += 1

    letters = select(DeadLetter).where(
        DeadLetter.tenant_id == tenant,
        or_(
            *(DeadLetter.payload.contains(n, autoescape=True) for n in sorted(wanted)),
            *(DeadLetter.error.contains(n, autoescape=True) for n in sorted(wanted)),
        ),
    )
    for letter in (await session.execute(letters)).scalars():
        if contact_id in letter.payload or contact_id in letter.error:
            await session.delete(letter)
            result.dead_letters_deleted += 1
        else:
            letter.payload = redact_json(letter.payload, strong)
            letter.error = redact_text(letter.error, strong)
            result.dead_letters_redacted += 1
    await session.flush()
    return result


async def purge_stream(
    js: JetStreamContext,
    stream: str,
    *,
    tenant_id: str,
    context: str,
    contact_id: str,
    terms: Iterable[str] = (),
    batch: int = 256,
    fetch_timeout: float = 1.0,
) -> int:
    """Delete from `stream` every event of `context` for this tenant whose payload mentions `contact_id` or
    one of the person's identifying `terms` (events about other records quoting them), except `*.erased`
    events; returns how many were deleted. Reads with a one-off consumer filtered on
    `crm.events.<tenant>.<context>.>`, so the cost is the tenant's events of that context."""
    subject = f"{SUBJECT_PREFIX}.{check_tenant(tenant_id)}.{context}.>"
    name = f"privacy-purge-{uuid.uuid4().hex[:12]}"
    config = ConsumerConfig(
        name=name,
        description=f"one-off scan deleting {context} events about an erased contact",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.ALL,
        ack_wait=60.0,
        inactive_threshold=120.0,
        mem_storage=True,
        num_replicas=1,
        filter_subject=subject,
    )
    try:
        await js.add_consumer(stream, config)
    except NotFoundError:
        log.warning("stream %s not found: nothing to purge", stream)
        return 0
    psub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    wanted = [contact_id.encode("utf-8")]
    wanted += sorted({n.encode("utf-8") for t in identifying_terms(terms) for n in needles(t)})
    deleted = 0
    try:
        if (await psub.consumer_info()).num_pending == 0:
            return 0
        while True:
            try:
                messages = await psub.fetch(batch, timeout=fetch_timeout)
            except TimeoutError:
                break
            for msg in messages:
                about = any(n in msg.data for n in wanted) and not msg.subject.endswith(".erased")
                if about and await _delete(js, stream, msg.metadata.sequence.stream):
                    deleted += 1
            if not messages:
                break
            await messages[-1].ack()
            if messages[-1].metadata.num_pending == 0:
                break
    finally:
        try:
            await psub.unsubscribe()
            await js.delete_consumer(stream, name)
        except Exception as exc:  # it expires after inactive_threshold anyway
            log.debug("removing the purge consumer failed: %s", exc)
    return deleted


async def _delete(js: JetStreamContext, stream: str, sequence: int) -> bool:
    try:
        return bool(await js.delete_msg(stream, sequence))
    except JetStreamError as exc:  # deleted meanwhile (another replica of this service): fine
        log.debug("deleting stream message %s failed: %s", sequence, exc)
        return False
