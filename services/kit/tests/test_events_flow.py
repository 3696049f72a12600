"""Outbox → relay → JetStream → consumer, against a real nats-server (started on a free port).

Proves: the relay publishes with Nats-Msg-Id and JetStream drops republished events; a consumer applies each
event once even when it is delivered twice or the process dies between commit and ack; a poison message
ends in the dead letters and can be replayed; and nothing is lost or doubled when nats-server is SIGKILLed
in the middle of a burst.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from opentelemetry import trace
from sqlalchemy import String, func, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit.context import current_tenant, system_scope, tenant_scope
from crm_kit.db import Database, Resource, make_base, utcnow
from crm_kit.db.engine import create_engine
from crm_kit.db.migrations import create_system_tables, enable_tenant_rls, grant_app_role
from crm_kit.db.system_tables import PENDING, SENT, OutboxMessage
from crm_kit.events import (
    DEFAULT_STREAM,
    Event,
    EventBus,
    EventConsumer,
    OutboxRelay,
    ensure_stream,
    list_dead_letters,
    record_event,
    replay,
    subject_filter,
)
from crm_kit.testing.databases import DatabaseFactory, DatabaseUrls
from crm_kit.testing.nats import NatsServer, free_port

Base = make_base()
WIDGET_CREATED = "crm.test.widget.created"
FILTER = subject_filter("test")


class Widget(Base, Resource):
    """The producer's resource."""

    __tablename__ = "widgets"
    name: Mapped[str] = mapped_column(String(200))


class Received(Base, Resource):
    """The consumer's effect: one row per application (no unique key, so a double apply would show)."""

    __tablename__ = "received"
    event_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))


TENANTS = ("tenant-a", "tenant-b", "tenant-0", "tenant-1", "tenant-2")


def _create_schema(connection: Connection, app_role: str) -> None:
    """What a service's first migration does: its tables, the kit's tables, row-level security, grants."""
    Base.metadata.create_all(connection)
    ops = Operations(MigrationContext.configure(connection))
    create_system_tables(ops)
    for table in ("widgets", "received"):
        enable_tenant_rls(ops, table)
    if connection.dialect.name == "postgresql" and app_role:
        grant_app_role(connection, app_role)


async def new_database(urls: DatabaseUrls) -> Database:
    """Migrate as the owner, connect as the application role (on PostgreSQL, bound by RLS)."""
    owner = create_engine(urls.owner)
    async with owner.begin() as conn:
        await conn.run_sync(_create_schema, urls.app_role)
    await owner.dispose()
    return Database(urls.app)


async def as_owner(urls: DatabaseUrls, sql: str) -> None:
    owner = create_engine(urls.owner)
    async with owner.begin() as conn:
        await conn.execute(text(sql))
    await owner.dispose()


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture
def nats(nats_server: NatsServer) -> Iterator[NatsServer]:
    if not nats_server.running:  # an earlier test that killed it failed before restarting it
        nats_server.start()
    yield nats_server
    if not nats_server.running:
        nats_server.start()


@pytest.fixture
async def bus(nats: NatsServer) -> AsyncIterator[EventBus]:
    """A connection plus a fresh, empty CRM_EVENTS stream (so tests do not see each other's events)."""
    event_bus = await EventBus.connect([nats.url], name="test-events", timeout=10)
    with contextlib.suppress(NotFoundError):
        await event_bus.js.delete_stream(DEFAULT_STREAM)
    await ensure_stream(event_bus, DEFAULT_STREAM)
    yield event_bus
    await event_bus.close()


@pytest.fixture
async def producer_db(database_factory: DatabaseFactory) -> AsyncIterator[Database]:
    """SQLite, and PostgreSQL too when CRM_TEST_POSTGRES_URL is set (the plugin parametrises the backend)."""
    db = await new_database(database_factory.create("producer"))
    yield db
    await db.dispose()


@pytest.fixture
def consumer_urls(database_factory: DatabaseFactory) -> DatabaseUrls:
    return database_factory.create("consumer")


@pytest.fixture
async def consumer_db(consumer_urls: DatabaseUrls) -> AsyncIterator[Database]:
    db = await new_database(consumer_urls)
    yield db
    await db.dispose()


# -- helpers -------------------------------------------------------------------------------------------


async def create_widget(db: Database, name: str, tenant: str = "tenant-a") -> Event:
    with tenant_scope(tenant):
        async with db.transaction() as session:
            widget = Widget(name=name)
            session.add(widget)
            await session.flush()
            return await record_event(
                session, source="crm/test", type=WIDGET_CREATED, subject=widget.id, data={"name": name}
            )


class Recorder:
    """A handler that writes a Received row per call, and can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[Event] = []
        self.fail_names: set[str] = set()
        self.trace_ids: list[int] = []

    async def __call__(self, session: AsyncSession, event: Event) -> None:
        assert current_tenant() == event.tenant_id
        self.calls.append(event)
        self.trace_ids.append(trace.get_current_span().get_span_context().trace_id)
        if event.data.get("name") in self.fail_names:
            raise ValueError(f"cannot handle {event.data['name']}")
        session.add(Received(event_id=event.id, name=event.data["name"]))


async def received(db: Database) -> tuple[int, int]:
    """(rows, distinct event ids) of the consumer's effect table, tenant by tenant as the guard wants."""
    ids: list[str] = []
    for tenant in TENANTS:
        with tenant_scope(tenant):
            async with db.transaction() as session:
                ids.extend((await session.scalars(select(Received.event_id))).all())
    return len(ids), len(set(ids))


async def outbox_statuses(db: Database) -> dict[str, int]:
    with system_scope():
        async with db.transaction() as session:
            query = select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)
            rows = (await session.execute(query)).all()
    return {str(status): int(count) for status, count in rows}


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(interval)


async def drain(consumer: EventConsumer, rounds: int = 3, timeout: float = 0.3) -> int:
    """Process until `rounds` consecutive fetches come back empty."""
    total, empty = 0, 0
    while empty < rounds:
        n = await consumer.process_available(timeout=timeout)
        total += n
        empty = 0 if n else empty + 1
    return total


async def stream_messages(bus: EventBus) -> int:
    return int((await bus.js.stream_info(DEFAULT_STREAM)).state.messages)


@pytest.fixture
async def consumers() -> AsyncIterator[list[EventConsumer]]:
    """Consumers made by a test, closed after it (their pull subscriptions would hold up the drain)."""
    made: list[EventConsumer] = []
    yield made
    for made_consumer in made:
        await made_consumer.close()


MakeConsumer = Callable[..., EventConsumer]


@pytest.fixture
def make_consumer(consumer_db: Database, bus: EventBus, consumers: list[EventConsumer]) -> MakeConsumer:
    def make(handler: Recorder, name: str, *, cls: type[EventConsumer] = EventConsumer, **kwargs: Any) -> EventConsumer:
        kwargs.setdefault("ack_wait", 2.0)
        kwargs.setdefault("backoff", [0.1])
        made = cls(consumer_db, bus, name=name, subjects=[FILTER], handler=handler, **kwargs)
        consumers.append(made)
        return made

    return make


# -- tests ---------------------------------------------------------------------------------------------


async def test_relay_publishes_with_msg_id_and_jetstream_dedupes(producer_db: Database, bus: EventBus) -> None:
    relay = OutboxRelay(producer_db, bus)
    first = await create_widget(producer_db, "甲")
    await create_widget(producer_db, "乙", tenant="tenant-b")
    assert await relay.publish_pending() == 2
    assert await outbox_statuses(producer_db) == {SENT: 2}
    assert await relay.publish_pending() == 0

    msg = await bus.js.get_msg(DEFAULT_STREAM, seq=1)
    assert msg.subject == "crm.events.tenant-a.test.widget.created"
    assert msg.headers is not None
    assert msg.headers["Nats-Msg-Id"] == first.id
    assert msg.headers["Content-Type"] == "application/cloudevents+json"
    assert msg.data is not None
    assert Event.from_json(msg.data) == first
    assert "甲".encode() in msg.data
    assert (await bus.js.get_msg(DEFAULT_STREAM, seq=2)).subject == "crm.events.tenant-b.test.widget.created"

    # A relay that crashed after publishing but before marking the rows sent publishes them again once
    # their lease runs out:
    with system_scope():
        async with producer_db.transaction() as session:
            await session.execute(
                update(OutboxMessage)
                .values(status=PENDING, sent_at=None, next_attempt_at=utcnow())
                .execution_options(synchronize_session=False)
            )
    assert await relay.publish_pending() == 2
    assert relay.duplicates == 2  # JetStream recognised the Nats-Msg-Ids
    assert await stream_messages(bus) == 2

    # Sent rows are kept for a while (for inspection), then pruned; pending rows never are.
    await create_widget(producer_db, "丙")
    assert await relay.prune_sent() == 0  # within the retention period
    assert await relay.prune_sent(older_than=timedelta(0)) == 2
    assert await outbox_statuses(producer_db) == {PENDING: 1}


async def test_relays_share_the_outbox_with_skip_locked(producer_db: Database, bus: EventBus, db_backend: str) -> None:
    """Two relay replicas on PostgreSQL never claim the same row (FOR UPDATE SKIP LOCKED plus a lease)."""
    if db_backend != "postgres":
        pytest.skip("SQLite has a single writer and one relay per database")
    total = 300
    with tenant_scope("tenant-a"):
        async with producer_db.transaction() as session:
            for i in range(total):
                await record_event(session, source="crm/test", type=WIDGET_CREATED, subject=str(i), data={})
    relays = [OutboxRelay(producer_db, bus, batch_size=25) for _ in range(2)]

    async def work(relay: OutboxRelay) -> None:
        while await relay.publish_pending():
            pass

    await asyncio.gather(*(work(r) for r in relays))
    assert sum(r.published for r in relays) == total
    assert all(r.published for r in relays)
    assert sum(r.duplicates for r in relays) == 0  # no row was published by both
    assert await outbox_statuses(producer_db) == {SENT: total}
    assert await stream_messages(bus) == total


async def test_relay_wakes_up_when_events_commit(producer_db: Database, bus: EventBus) -> None:
    relay = OutboxRelay(producer_db, bus, poll_interval=60)  # it would not poll during this test
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await asyncio.sleep(0.2)  # first pass done, now asleep
        await create_widget(producer_db, "now")
        assert await eventually(lambda: _all_sent(producer_db, 1), timeout=2)
    finally:
        stop.set()
        await task


async def test_relay_retries_with_backoff_until_the_stream_exists(producer_db: Database, bus: EventBus) -> None:
    await bus.js.delete_stream(DEFAULT_STREAM)
    relay = OutboxRelay(producer_db, bus, base_backoff=0.05, max_backoff=0.2, publish_timeout=1.0)
    await create_widget(producer_db, "w")
    assert await relay.publish_pending() == 0
    with system_scope():
        async with producer_db.transaction() as session:
            query = select(OutboxMessage.attempts, OutboxMessage.last_error, OutboxMessage.status)
            attempts, error, status = (await session.execute(query)).one()
    assert (attempts, status) == (1, PENDING)
    assert error  # e.g. NoStreamResponseError
    assert await relay.publish_pending() == 0  # not due yet: backing off

    await ensure_stream(bus, DEFAULT_STREAM)
    await asyncio.sleep(0.25)
    assert await relay.publish_pending() == 1
    assert await outbox_statuses(producer_db) == {SENT: 1}


async def test_consumer_applies_each_event_once(
    producer_db: Database, consumer_db: Database, bus: EventBus, make_consumer: MakeConsumer
) -> None:
    relay = OutboxRelay(producer_db, bus)
    events = [await create_widget(producer_db, f"w{i}", tenant=f"tenant-{i % 2}") for i in range(5)]
    assert await relay.publish_pending() == 5
    # The same event once more under another message id (a second producer, a bug, a manual republish):
    # JetStream keeps it, the inbox must drop it.
    await bus.js.publish(events[0].nats_subject, events[0].to_json(), headers={"Nats-Msg-Id": f"{events[0].id}:again"})
    handler = Recorder()
    sub = make_consumer(handler, "test-once")
    assert await drain(sub) == 6
    assert await received(consumer_db) == (5, 5)
    assert len(handler.calls) == 5
    assert (sub.applied, sub.skipped) == (5, 1)
    info = await bus.js.consumer_info(DEFAULT_STREAM, "test-once")
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert info.config.filter_subject == FILTER


async def test_crash_after_commit_before_ack_is_not_applied_twice(
    producer_db: Database, consumer_db: Database, bus: EventBus, make_consumer: MakeConsumer
) -> None:
    class CrashBeforeAck(EventConsumer):
        crashed = 0

        async def _ack(self, msg: Msg) -> None:
            if not self.crashed:  # the process "dies" after the commit: the ack never reaches the server
                self.crashed += 1
                return
            await super()._ack(msg)

    await create_widget(producer_db, "once")
    assert await OutboxRelay(producer_db, bus).publish_pending() == 1
    handler = Recorder()
    sub = make_consumer(handler, "test-crash", cls=CrashBeforeAck, ack_wait=1.0)
    assert await sub.process_available(timeout=2) == 1
    assert await received(consumer_db) == (1, 1)
    assert await sub.process_available(timeout=3) == 1  # redelivered after ack_wait
    assert sub.skipped == 1
    assert len(handler.calls) == 1
    assert await received(consumer_db) == (1, 1)
    assert await drain(sub) == 0  # acknowledged now


async def test_poison_message_is_dead_lettered_and_replayed(
    producer_db: Database, consumer_db: Database, bus: EventBus, make_consumer: MakeConsumer
) -> None:
    await create_widget(producer_db, "good")
    poison = await create_widget(producer_db, "poison")
    assert await OutboxRelay(producer_db, bus).publish_pending() == 2
    handler = Recorder()
    handler.fail_names.add("poison")
    sub = make_consumer(handler, "test-poison", max_deliver=3)

    await drain(sub, rounds=4)
    assert sub.dead_lettered == 1
    assert [e.data["name"] for e in handler.calls].count("poison") == 3
    assert await received(consumer_db) == (1, 1)
    [dead] = await list_dead_letters(consumer_db, consumer="test-poison")
    assert (dead.event_id, dead.tenant_id, dead.deliveries) == (poison.id, "tenant-a", 3)
    assert dead.subject == poison.nats_subject
    assert dead.stream_sequence == 2
    assert "cannot handle poison" in dead.error
    assert Event.from_json(dead.payload.encode()) == poison
    assert dead.replayed_at is None
    assert await list_dead_letters(consumer_db, consumer="other") == []
    info = await bus.js.consumer_info(DEFAULT_STREAM, "test-poison")
    assert info.num_ack_pending == 0 and info.num_redelivered == 0  # terminated, not coming back

    handler.fail_names.clear()  # the bug is fixed; the operator replays
    await replay(consumer_db, bus, dead.id)
    assert await drain(sub) == 1
    assert await received(consumer_db) == (2, 2)
    [dead] = await list_dead_letters(consumer_db)
    assert dead.replayed_at is not None
    assert await list_dead_letters(consumer_db, include_replayed=False) == []
    last = await bus.js.get_msg(DEFAULT_STREAM, seq=3)
    assert last.headers is not None and last.headers["Nats-Msg-Id"] == f"{poison.id}:replay:{dead.id}"

    # A consumer that had already applied the event skips the replay thanks to its inbox.
    other = make_consumer(Recorder(), "test-poison-other")
    await drain(other)
    assert (other.applied, other.skipped) == (2, 1)  # good, poison, then the replay of poison


async def test_database_outage_does_not_use_up_the_delivery_budget(
    producer_db: Database,
    consumer_db: Database,
    consumer_urls: DatabaseUrls,
    bus: EventBus,
    make_consumer: MakeConsumer,
) -> None:
    await create_widget(producer_db, "patient")
    assert await OutboxRelay(producer_db, bus).publish_pending() == 1
    await as_owner(consumer_urls, "ALTER TABLE inbox RENAME TO inbox_away")  # "down": no inbox to read
    handler = Recorder()
    sub = make_consumer(handler, "test-outage", max_deliver=2)
    deliveries = [await sub.process_available(timeout=1) for _ in range(4)]
    assert deliveries == [1, 1, 1, 1]  # delivered more often than max_deliver
    assert sub.dead_lettered == 0 and await list_dead_letters(consumer_db) == []
    assert handler.calls == []

    await as_owner(consumer_urls, "ALTER TABLE inbox_away RENAME TO inbox")  # back up
    await drain(sub)
    assert await received(consumer_db) == (1, 1)
    assert sub.dead_lettered == 0


async def test_malformed_message_is_dead_lettered_at_once(
    consumer_db: Database, bus: EventBus, make_consumer: MakeConsumer
) -> None:
    await bus.js.publish(
        "crm.events.tenant-a.test.widget.created", b'{"specversion": "1.0"', headers={"Nats-Msg-Id": "bad-1"}
    )
    handler = Recorder()
    sub = make_consumer(handler, "test-malformed")
    assert await drain(sub) == 1
    assert handler.calls == []
    [dead] = await list_dead_letters(consumer_db)
    assert (dead.event_id, dead.tenant_id, dead.deliveries) == ("bad-1", "", 1)
    assert dead.error.startswith("MalformedEvent")
    assert dead.payload == '{"specversion": "1.0"'


async def test_trace_context_flows_from_producer_to_consumer(
    producer_db: Database, consumer_db: Database, bus: EventBus, make_consumer: MakeConsumer
) -> None:
    from crm_kit import telemetry

    telemetry.configure_tracing("test-events")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("create widget") as span:
        trace_id = span.get_span_context().trace_id
        event = await create_widget(producer_db, "traced")
    assert event.traceparent.startswith(f"00-{trace_id:032x}-")
    await OutboxRelay(producer_db, bus).publish_pending()
    msg = await bus.js.get_msg(DEFAULT_STREAM, seq=1)
    assert msg.headers is not None and msg.headers["traceparent"] == event.traceparent
    handler = Recorder()
    await drain(make_consumer(handler, "test-trace"))
    assert handler.trace_ids == [trace_id]
    if telemetry.memory_exporter is not None:
        spans = [s for s in telemetry.memory_exporter.get_finished_spans() if s.name == f"process {WIDGET_CREATED}"]
        assert spans and spans[-1].context.trace_id == trace_id
        assert spans[-1].kind == trace.SpanKind.CONSUMER


async def test_consumer_recovers_after_server_restart(
    producer_db: Database, consumer_db: Database, bus: EventBus, nats: NatsServer, make_consumer: MakeConsumer
) -> None:
    """nats.py #504: a pull subscription can go deaf after a restart; the consumer recreates it."""
    relay = OutboxRelay(producer_db, bus, poll_interval=0.05, max_backoff=1.0)
    handler = Recorder()
    sub = make_consumer(handler, "test-restart", fetch_timeout=0.5)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(sub.run(stop))]
    try:
        await create_widget(producer_db, "before")
        assert await eventually(lambda: _count_is(consumer_db, 1))
        assert sub.subscriptions == 1

        nats.stop()  # a clean restart (SIGTERM), as in a rolling upgrade
        await asyncio.sleep(0.3)
        nats.start()
        await create_widget(producer_db, "after")
        assert await eventually(lambda: _count_is(consumer_db, 2), timeout=15)
        assert sub.subscriptions >= 2
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _count_is(db: Database, expected: int) -> bool:
    return (await received(db)) == (expected, expected)


async def test_no_loss_when_nats_server_is_killed_mid_burst(
    producer_db: Database, consumer_db: Database, bus: EventBus, nats: NatsServer, make_consumer: MakeConsumer
) -> None:
    total = 200
    relay = OutboxRelay(producer_db, bus, poll_interval=0.02, max_backoff=1.0, publish_timeout=1.0)
    handler = Recorder()
    sub = make_consumer(handler, "test-no-loss", fetch_timeout=0.5, batch=32)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(sub.run(stop))]
    killed_at = -1
    try:
        for i in range(total):
            await create_widget(producer_db, f"burst-{i}", tenant=f"tenant-{i % 3}")
            if i == total // 2:
                assert relay.published > 0  # the relay is publishing while we produce
                nats.kill()  # SIGKILL, mid-burst: in-flight publishes, fetches and acks are lost
                killed_at = i
            if i == total // 2 + 40:
                backlog = (await outbox_statuses(producer_db)).get(PENDING, 0)
                nats.start()  # same port, same store
            await asyncio.sleep(0.005)
        assert killed_at == total // 2

        assert await eventually(lambda: _count_is(consumer_db, total), timeout=30), await received(consumer_db)
        assert await eventually(lambda: _all_sent(producer_db, total), timeout=10)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert await received(consumer_db) == (total, total)  # every event, exactly once
    assert len({e.id for e in handler.calls}) == total
    assert await stream_messages(bus) == total  # and JetStream stored each one once
    assert backlog > 40  # the outage was real: events piled up in the outbox meanwhile


async def _all_sent(db: Database, total: int) -> bool:
    return await outbox_statuses(db) == {SENT: total}


async def test_first_connection_can_be_bounded_in_time() -> None:
    with pytest.raises(TimeoutError):
        await EventBus.connect(f"nats://127.0.0.1:{free_port()}", name="nobody-there", timeout=0.5)


async def test_ensure_stream_from_a_url_updates_in_place(bus: EventBus, nats: NatsServer) -> None:
    info = await ensure_stream(nats.url, DEFAULT_STREAM, 1)
    assert info.config.duplicate_window == 600
    assert info.config.subjects == ["crm.events.>"]
    assert info.config.num_replicas == 1
    assert info.config.storage == "file"
    info = await ensure_stream(nats.url, DEFAULT_STREAM, 1, max_age_days=1)
    assert info.config.max_age == 86400
