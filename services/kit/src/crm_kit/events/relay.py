"""The outbox relay: publishes committed outbox rows to JetStream, at least once and without loss.

One pass (`publish_pending`):
1. claim up to `batch_size` pending rows that are due, the longest due first (`FOR UPDATE SKIP LOCKED` on
   PostgreSQL so several replicas share the work), and lease them by pushing `next_attempt_at` forward, in
   a short transaction, so no lock or connection is held while talking to NATS;
2. publish them all with `publish_async` (header `Nats-Msg-Id` = event id, so JetStream drops repeats
   inside the stream's duplicate window) and wait for the PubAcks, bounded by `publish_timeout`;
3. mark acknowledged rows `sent`; give the others an exponential backoff capped at `max_backoff`.

A crash anywhere leaves rows pending; they are published again when their lease or backoff runs out, which
is well inside the duplicate window, and consumers deduplicate with their inbox as well. While NATS is
unreachable the relay only waits; when the connection comes back every backoff is cut short.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from nats.js.api import PubAck
from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_kit.context import system_scope
from crm_kit.db.base import utcnow
from crm_kit.db.engine import Database
from crm_kit.db.system_tables import PENDING, SENT, OutboxMessage
from crm_kit.events.bus import EventBus
from crm_kit.events.envelope import CONTENT_TYPE
from crm_kit.events.outbox import add_commit_listener, remove_commit_listener
from crm_kit.events.stream import DUPLICATE_WINDOW_SECONDS

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
_SYNC = {"synchronize_session": False}


@dataclass(frozen=True)
class _Claimed:
    id: str
    subject: str
    payload: str
    traceparent: str
    attempts: int


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class OutboxRelay:
    """Publishes a service's outbox. Run one per service process: `await relay.run(stop)`."""

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        *,
        batch_size: int = 256,
        poll_interval: float = 0.25,
        max_backoff: float = 30.0,
        base_backoff: float = 0.5,
        publish_timeout: float = 5.0,
        retention: timedelta = timedelta(hours=24),
        prune_interval: float = 600.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if max_backoff + 3 * publish_timeout >= DUPLICATE_WINDOW_SECONDS:
            raise ValueError("max_backoff must stay well inside the stream's duplicate window")
        self.db = db
        self.bus = bus
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.base_backoff = base_backoff
        self.publish_timeout = publish_timeout
        self.lease = max(3 * publish_timeout, 10.0)  # a claimed row is retried after this if we crash
        self.retention = retention
        self.prune_interval = prune_interval
        self.published = 0  # counters for metrics and tests
        self.failed = 0
        self.duplicates = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._retry_now = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        """Like `Database.transaction()`, in the system scope (the relay sees every tenant's rows, also
        under PostgreSQL row-level security) and without the after-commit hooks, which may wake this very
        relay."""
        with system_scope():
            async with self.db.sessions() as session, session.begin():
                yield session

    # -- waking up -------------------------------------------------------------------------------------

    def notify(self) -> None:
        """Publish now rather than at the next poll (call after committing events; thread-safe)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._wake.set()
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    def _on_reconnect(self) -> None:
        self._retry_now = True
        self.notify()

    # -- the loop --------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set. Never raises: every failure is logged and retried."""
        self._loop = asyncio.get_running_loop()
        add_commit_listener(self.notify)
        self.bus.on_reconnect(self._on_reconnect)
        next_prune = time.monotonic()
        errors = 0
        try:
            while not stop.is_set():
                published = 0
                try:
                    published = await self.publish_pending()
                    errors = 0
                except Exception as exc:  # the database is down, say: keep going
                    errors += 1
                    log.warning("outbox relay pass failed (%s); retrying", describe(exc))
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self.prune_interval
                    try:
                        await self.prune_sent()
                    except Exception as exc:
                        log.warning("outbox prune failed (%s)", describe(exc))
                if published >= self.batch_size:
                    await asyncio.sleep(0)  # more is waiting: go on at once
                    continue
                delay = (
                    min(self.max_backoff, self.poll_interval * 2 ** min(errors, 30)) if errors else self.poll_interval
                )
                await self._sleep(stop, delay)
        finally:
            remove_commit_listener(self.notify)
            self.bus.remove_on_reconnect(self._on_reconnect)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        waits = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    # -- one pass --------------------------------------------------------------------------------------

    async def publish_pending(self) -> int:
        """Publish one batch of due rows; returns how many were acknowledged by JetStream."""
        async with self._lock:
            self._wake.clear()  # a notify() from here on triggers another pass
            if not self.bus.is_connected:
                return 0  # nothing can succeed; wait for the reconnect instead of burning attempts
            if self._retry_now:
                self._retry_now = False
                await self._cut_backoff()
            rows = await self._claim()
            if not rows:
                return 0
            errors = await self._publish(rows)
            await self._settle(rows, errors)
            sent = len(rows) - len(errors)
            self.published += sent
            self.failed += len(errors)
            return sent

    async def _claim(self) -> list[_Claimed]:
        now = utcnow()
        query = (
            select(
                OutboxMessage.id,
                OutboxMessage.subject,
                OutboxMessage.payload,
                OutboxMessage.traceparent,
                OutboxMessage.attempts,
            )
            .where(OutboxMessage.status == PENDING, OutboxMessage.next_attempt_at <= now)
            # The order of the (status, next_attempt_at) index, so the database stops after one batch instead
            # of sorting every pending row (a bulk import leaves a hundred thousand). A new row is due when it
            # is written, so first attempts go in the order they were written.
            .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
            .limit(self.batch_size)
        )
        if self.db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        async with self._transaction() as session:
            rows = [_Claimed(*row) for row in (await session.execute(query)).all()]
            if rows:
                await session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id.in_([r.id for r in rows]))
                    .values(next_attempt_at=now + timedelta(seconds=self.lease))
                    .execution_options(**_SYNC)
                )
        return rows

    async def _publish(self, rows: list[_Claimed]) -> dict[str, str]:
        """Publish every row and wait for the acks; returns the error of each row that failed."""
        js = self.bus.js
        errors: dict[str, str] = {}
        futures: dict[str, asyncio.Future[PubAck]] = {}
        deadline = time.monotonic() + self.publish_timeout
        for index, row in enumerate(rows):
            headers = {MSG_ID_HEADER: row.id, "Content-Type": CONTENT_TYPE}
            if row.traceparent:
                headers["traceparent"] = row.traceparent
            try:
                # Not wrapped in wait_for: cancelling publish_async half-way would leak its pending slot.
                futures[row.id] = await js.publish_async(
                    row.subject,
                    row.payload.encode("utf-8"),
                    headers=headers,
                    wait_stall=max(deadline - time.monotonic(), 0.01),
                )
            except Exception as exc:  # the connection is gone or saturated: the rest would fail too
                for rest in rows[index:]:
                    errors[rest.id] = describe(exc)
                break
        if futures:
            await asyncio.wait(futures.values(), timeout=max(deadline - time.monotonic(), 0.01))
        for event_id, future in futures.items():
            if not future.done():
                future.cancel()  # frees its publish_async slot
                errors[event_id] = "TimeoutError: no PubAck within the publish timeout"
            elif future.cancelled():
                errors[event_id] = "CancelledError"
            elif (failure := future.exception()) is not None:
                errors[event_id] = describe(failure)
            elif future.result().duplicate:
                self.duplicates += 1  # stored before (an earlier attempt lost its ack): counts as sent
        return errors

    def nominal_backoff(self, attempts: int) -> float:
        """Delay before attempt `attempts + 1`: exponential from `base_backoff`, capped at `max_backoff`."""
        return min(self.max_backoff, self.base_backoff * 2 ** min(max(attempts - 1, 0), 30))

    def backoff(self, attempts: int) -> float:
        """The nominal backoff minus up to 20 % jitter, so replicas do not retry in lockstep."""
        return self.nominal_backoff(attempts) * random.uniform(0.8, 1.0)

    async def _settle(self, rows: list[_Claimed], errors: dict[str, str]) -> None:
        now = utcnow()
        sent = [r.id for r in rows if r.id not in errors]
        failed: dict[tuple[int, str], list[str]] = defaultdict(list)
        for row in rows:
            if row.id in errors:
                failed[(row.attempts + 1, errors[row.id][:2000])].append(row.id)
        async with self._transaction() as session:
            if sent:
                await session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id.in_(sent))
                    .values(status=SENT, sent_at=now, last_error="")
                    .execution_options(**_SYNC)
                )
            for (attempts, error), ids in failed.items():
                await session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id.in_(ids), OutboxMessage.status == PENDING)
                    .values(
                        attempts=attempts,
                        last_error=error,
                        next_attempt_at=now + timedelta(seconds=self.backoff(attempts)),
                    )
                    .execution_options(**_SYNC)
                )
        if failed:
            first = next(iter(failed))
            log.warning(
                "could not publish %d of %d events (attempt %d, retrying within %.1fs): %s",
                len(errors),
                len(rows),
                first[0],
                self.nominal_backoff(first[0]),
                first[1],
            )

    async def _cut_backoff(self) -> None:
        """After a reconnect, retry failed rows now instead of at the end of their backoff."""
        async with self._transaction() as session:
            await session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.status == PENDING,
                    OutboxMessage.attempts > 0,
                    OutboxMessage.next_attempt_at > utcnow(),
                )
                .values(next_attempt_at=utcnow())
                .execution_options(**_SYNC)
            )

    # -- housekeeping ----------------------------------------------------------------------------------

    async def prune_sent(self, older_than: timedelta | None = None) -> int:
        """Delete rows sent more than `older_than` (default: the retention period) ago."""
        cutoff = utcnow() - (older_than if older_than is not None else self.retention)
        async with self._transaction() as session:
            result = await session.execute(
                delete(OutboxMessage)
                .where(OutboxMessage.status == SENT, OutboxMessage.sent_at < cutoff)
                .execution_options(**_SYNC)
            )
        removed = cast(CursorResult[Any], result).rowcount
        if removed:
            log.info("pruned %d sent outbox rows", removed)
        return removed

    async def pending_count(self) -> int:
        async with self._transaction() as session:
            count = await session.scalar(
                select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == PENDING)
            )
        return int(count or 0)
