"""Event consumers: durable JetStream pull consumers that apply each event exactly once.

Delivery is at least once; the effect is exactly once because the handler's changes and the inbox row
(consumer, event id) commit in one transaction, and a delivery whose inbox row exists is acknowledged
without running the handler. A handler that fails is retried later (`nak` with a growing delay); after
`max_deliver` deliveries the message is kept in `dead_letters` and terminated.

The delivery budget is enforced here, not by the server, whose `max_deliver` stays unlimited: the server
would silently drop a message whose last delivery was lost in a crash, and would count deliveries that
failed only because the database was down. Here a message is dead-lettered once its handler has failed on
`max_deliver` deliveries; failures before the handler runs (the database is unreachable) are retried with
the same delays but never dead-letter the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Awaitable, Callable, Sequence

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_kit.context import acting_as, system_scope, tenant_scope
from crm_kit.db.base import utcnow
from crm_kit.db.engine import Database
from crm_kit.db.ids import uuid7
from crm_kit.db.system_tables import DeadLetter, InboxEntry
from crm_kit.events.bus import EventBus
from crm_kit.events.envelope import Event, MalformedEvent
from crm_kit.events.relay import MSG_ID_HEADER, describe
from crm_kit.events.stream import DEFAULT_STREAM

log = logging.getLogger(__name__)
tracer = trace.get_tracer("crm_kit.events")

Handler = Callable[[AsyncSession, Event], Awaitable[None]]


class DatabaseUnavailable(Exception):
    """The database failed before the handler ran (an outage): retried without using up the budget."""


DEFAULT_BACKOFF = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0)
ACK_TIMEOUT = 2.0  # seconds to wait for the server to confirm an ack
ERROR_LIMIT = 8000  # characters of error text kept with a dead letter


class EventConsumer:
    """One durable consumer (`name`) of the events matching `subjects`, applied by `handler`."""

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        *,
        name: str,
        subjects: Sequence[str],
        handler: Handler,
        stream: str = DEFAULT_STREAM,
        batch: int = 64,
        ack_wait: float = 30.0,
        max_deliver: int = 8,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        fetch_timeout: float = 1.0,
        max_ack_pending: int = 1000,
        resubscribe_after_idle: int = 60,
    ) -> None:
        if not subjects:
            raise ValueError("a consumer needs at least one subject filter")
        if max_deliver < 1 or batch < 1 or fetch_timeout <= 0:
            raise ValueError("max_deliver, batch and fetch_timeout must be positive")
        self.db = db
        self.bus = bus
        self.name = name
        self.subjects = list(subjects)
        self.handler = handler
        self.stream = stream
        self.batch = batch
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.backoff = list(backoff) or [1.0]
        self.fetch_timeout = fetch_timeout  # never None: nats.py #791
        self.max_ack_pending = max_ack_pending
        self.resubscribe_after_idle = resubscribe_after_idle
        self.subscriptions = 0  # how many times the pull subscription was (re)created
        self.applied = 0
        self.skipped = 0
        self.dead_lettered = 0
        self._psub: JetStreamContext.PullSubscription | None = None
        self._stale = False
        self._idle_fetches = 0

    # -- subscription ----------------------------------------------------------------------------------

    def consumer_config(self) -> ConsumerConfig:
        config = ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            description=f"CRM event consumer {self.name}",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=-1,  # the budget is enforced in _handle, see the module docstring
            max_ack_pending=self.max_ack_pending,
        )
        if len(self.subjects) == 1:
            config.filter_subject = self.subjects[0]
        else:
            config.filter_subjects = self.subjects
        return config

    async def _subscription(self) -> JetStreamContext.PullSubscription:
        """The pull subscription, (re)created after a reconnect or errors (nats.py #504)."""
        if self._psub is not None and not self._stale:
            return self._psub
        await self._drop_subscription()
        js = self.bus.js
        await js.add_consumer(self.stream, self.consumer_config())  # creates, or updates the filters
        self._psub = await js.pull_subscribe_bind(
            durable=self.name,
            stream=self.stream,
            pending_msgs_limit=max(self.batch * 16, 1024),
            pending_bytes_limit=64 * 1024 * 1024,
        )
        self._stale = False
        self._idle_fetches = 0
        self.subscriptions += 1
        if self.subscriptions > 1:
            log.info("consumer %s: pull subscription recreated", self.name)
        return self._psub

    async def _drop_subscription(self) -> None:
        psub, self._psub = self._psub, None
        if psub is not None:
            try:
                await psub.unsubscribe()
            except Exception as exc:
                log.debug("consumer %s: unsubscribe failed (%s)", self.name, describe(exc))

    def _on_reconnect(self) -> None:
        self._stale = True

    async def close(self) -> None:
        """Drop the pull subscription (`run` does this when it stops; call it after `process_available`)."""
        await self._drop_subscription()

    # -- the loop --------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set. Never raises: failures are logged and retried."""
        self.bus.on_reconnect(self._on_reconnect)
        errors = 0
        try:
            while not stop.is_set():
                if not self.bus.is_connected:
                    await _sleep(stop, 0.25)
                    continue
                try:
                    await self.process_available(timeout=self.fetch_timeout)
                    errors = 0
                except Exception as exc:
                    errors += 1
                    self._stale = True
                    log.warning("consumer %s: fetch failed (%s); retrying", self.name, describe(exc))
                    await _sleep(stop, min(5.0, 0.1 * 2 ** min(errors, 10)))
        finally:
            self.bus.remove_on_reconnect(self._on_reconnect)
            await self._drop_subscription()

    async def process_available(self, timeout: float = 1.0) -> int:
        """Fetch one batch (waiting up to `timeout` seconds for the first message) and handle it; returns
        the number of messages handled, whatever their outcome."""
        psub = await self._subscription()
        try:
            messages = await psub.fetch(self.batch, timeout=timeout)
        except TimeoutError:  # nats.py #418/#709: nothing there is an empty batch, not an error
            self._idle_fetches += 1
            if self._idle_fetches >= self.resubscribe_after_idle:
                self._stale = True  # cheap insurance against a silently dead subscription
            return 0
        except Exception:
            self._stale = True
            raise
        self._idle_fetches = 0
        for msg in messages:
            await self._handle(msg)
        return len(messages)

    # -- one message -----------------------------------------------------------------------------------

    async def _handle(self, msg: Msg) -> None:
        deliveries = msg.metadata.num_delivered or 1
        try:
            event = Event.from_json(msg.data)
        except MalformedEvent as exc:
            log.error("consumer %s: malformed event on %s: %s", self.name, msg.subject, exc)
            await self._dead_letter(msg, None, f"MalformedEvent: {exc}", deliveries)
            return
        parent = propagate.extract(msg.headers or {})
        with tracer.start_as_current_span(
            f"process {event.type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            record_exception=False,
            set_status_on_exception=False,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": self.name,
                "messaging.message.id": event.id,
                "crm.tenant_id": event.tenant_id,
                "crm.delivery": deliveries,
            },
        ) as span:
            try:
                applied = await self._apply(event, msg)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, describe(exc)))
                if isinstance(exc, DatabaseUnavailable):
                    delay = self.retry_delay(deliveries)
                    log.warning(
                        "consumer %s: event %s not handled, retrying in %.1fs: %s",
                        self.name,
                        event.id,
                        delay,
                        exc,
                    )
                    await self._nak(msg, delay)
                else:
                    await self._failed(msg, event, exc, deliveries)
                return
            span.set_attribute("crm.duplicate", not applied)
        if applied:
            self.applied += 1
        else:
            self.skipped += 1
        await self._ack(msg)

    async def _apply(self, event: Event, msg: Msg) -> bool:
        """Run the handler and record the inbox row in one transaction; False if already applied."""
        key = (self.name, event.id)
        keep_alive = asyncio.create_task(self._keep_alive(msg))
        handler_ran = False
        try:
            # The audit log records changes made here as done by "system:<consumer>".
            with tenant_scope(event.tenant_id), acting_as(f"system:{self.name}"):
                try:
                    async with self.db.transaction() as session:
                        if await session.get(InboxEntry, key) is not None:
                            return False
                        session.add(
                            InboxEntry(
                                consumer=self.name,
                                event_id=event.id,
                                tenant_id=event.tenant_id,
                                processed_at=utcnow(),
                            )
                        )
                        await session.flush()  # claims the event id before the work is done
                        handler_ran = True
                        await self.handler(session, event)
                    return True
                except IntegrityError:
                    # Another delivery of the same event committed first: then this one is a duplicate.
                    async with self.db.transaction() as session:
                        if await session.get(InboxEntry, key) is not None:
                            return False
                    raise
                except Exception as exc:
                    if not handler_ran:  # the inbox check failed: the database, not the event, is at fault
                        raise DatabaseUnavailable(describe(exc)) from exc
                    raise
        finally:
            keep_alive.cancel()

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell the server the message is still being worked on, so a slow handler is not redelivered."""
        interval = max(self.ack_wait / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
            except Exception as exc:
                log.debug("consumer %s: in_progress failed (%s)", self.name, describe(exc))

    async def _failed(self, msg: Msg, event: Event, exc: Exception, deliveries: int) -> None:
        if deliveries >= self.max_deliver:
            error = "".join(traceback.format_exception(exc))
            log.error(
                "consumer %s: event %s (%s) failed %d times, dead-lettered: %s",
                self.name,
                event.id,
                event.type,
                deliveries,
                describe(exc),
            )
            await self._dead_letter(msg, event, error, deliveries)
            return
        delay = self.retry_delay(deliveries)
        log.warning(
            "consumer %s: event %s (%s) failed on delivery %d, retrying in %.1fs: %s",
            self.name,
            event.id,
            event.type,
            deliveries,
            delay,
            describe(exc),
        )
        await self._nak(msg, delay)

    def retry_delay(self, deliveries: int) -> float:
        return self.backoff[min(deliveries - 1, len(self.backoff) - 1)]

    async def _dead_letter(self, msg: Msg, event: Event | None, error: str, deliveries: int) -> None:
        sequence = msg.metadata.sequence.stream
        try:
            with system_scope():  # malformed messages have no tenant
                await self._store_dead_letter(msg, event, error, deliveries, sequence)
        except Exception as exc:  # keep the message in the stream until it can be stored
            log.error("consumer %s: storing a dead letter failed (%s)", self.name, describe(exc))
            await self._nak(msg, self.retry_delay(deliveries))
            return
        self.dead_lettered += 1
        await self._term(msg)

    async def _store_dead_letter(
        self, msg: Msg, event: Event | None, error: str, deliveries: int, sequence: int
    ) -> None:
        async with self.db.transaction() as session:
            exists = await session.scalar(
                select(DeadLetter.id).where(DeadLetter.consumer == self.name, DeadLetter.stream_sequence == sequence)
            )
            if exists is not None:  # already kept by a delivery that crashed before term()
                return
            session.add(
                DeadLetter(
                    id=uuid7(),
                    consumer=self.name,
                    stream_sequence=sequence,
                    subject=msg.subject,
                    event_id=event.id if event else (msg.headers or {}).get(MSG_ID_HEADER, ""),
                    tenant_id=event.tenant_id if event else "",
                    payload=msg.data.decode("utf-8", errors="replace"),
                    error=error[-ERROR_LIMIT:],
                    deliveries=deliveries,
                    created_at=utcnow(),
                )
            )

    # -- acknowledgements (separate methods so tests can simulate crashes between the steps) -------------

    async def _ack(self, msg: Msg) -> None:
        # An ack that does not reach the server only costs a redelivery, which the inbox then skips.
        if not self.bus.is_connected:  # do not wait out a timeout for every message of the batch
            log.info("consumer %s: not connected, ack skipped (event will be redelivered)", self.name)
            return
        try:
            await msg.ack_sync(timeout=ACK_TIMEOUT)
        except Exception as exc:
            log.warning("consumer %s: ack failed (%s)", self.name, describe(exc))

    async def _nak(self, msg: Msg, delay: float) -> None:
        try:
            await msg.nak(delay=delay)
        except Exception as exc:  # redelivered after ack_wait instead
            log.warning("consumer %s: nak failed (%s)", self.name, describe(exc))

    async def _term(self, msg: Msg) -> None:
        try:
            await msg.term()
        except Exception as exc:
            log.warning("consumer %s: term failed (%s)", self.name, describe(exc))


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
