"""One chunk of an import, start to end: load the contacts and accounts its rows name, plan every row
(validation, normalisation, matching), build what each create writes, and write it all in one transaction.

A large file's chunks go to a pool of worker processes, each with its own database connection, so that on a
machine with two cores one chunk is validated while another is written: validation is pure CPU work (phone
and email parsing, the record as a message and as JSON), and most of a write is too. A small file's chunks
run in the service's own event loop; starting a worker costs more than it saves. Both run `process`, on the
same inputs, so the outcome cannot depend on where it ran.

Concurrent chunks are safe: a write transaction takes SQLite's write lock before its first read
(`Database.transaction(write=True)`), and on PostgreSQL the contacts an update targets are locked while it
is re-planned. Rows sharing an id or external_id are refused before any chunk starts (rows.duplicates), so two
chunks never write the same contact.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customer.transfer import apply, rows
from crm_customer.transfer.rows import CREATE, UNCHANGED, UPDATE, Context, Plan, Problem, RowInput
from crm_kit.context import Principal, require_tenant, tenant_scope
from crm_kit.db import Database
from crm_kit.logging import configure_logging

log = logging.getLogger("crm_customer.transfer")

WORKERS_ENV = "CUSTOMER_IMPORT_WORKERS"
INLINE_MAX_ROWS = 2_000  # files up to this size run in the service's event loop
COUNTED = {CREATE: "created", UPDATE: "updated", UNCHANGED: "unchanged"}


@dataclass
class Chunk:
    inputs: list[RowInput]
    ctx: Context  # the import's settings, catalog and caller; lookups are loaded per chunk
    duplicates: dict[int, list[Problem]]  # problems of these rows found across the whole file
    stamp: apply.Stamp | None  # who writes; None for a dry run (nothing is built or written)


@dataclass
class Outcome:
    rows: int
    counts: dict[str, int] = field(default_factory=dict)  # created, updated, unchanged, failed
    problems: list[Problem] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """A chunk allocates tens of thousands of objects that all live until its end: the collector would walk
    them again and again for nothing (a third of the chunk's time). It runs once afterwards instead."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def process(db: Database, chunk: Chunk) -> Outcome:
    with gc_paused():
        async with db.transaction() as session:
            ctx = await rows.load(session, chunk.ctx, chunk.inputs)
        outcome = Outcome(len(chunk.inputs))
        plans: list[Plan] = []
        for inp in chunk.inputs:
            found = chunk.duplicates.get(inp.number) or rows.plan(inp, ctx)
            if isinstance(found, Plan):
                plans.append(found)
            else:
                outcome.problems += found
                outcome.add("failed")
        if chunk.stamp is None:
            for p in plans:
                outcome.add(COUNTED[p.action])
            return outcome
        creates = [p for p in plans if p.action == CREATE]
        created = apply.build_creates(creates, ctx.catalog, ctx.accounts, chunk.stamp)
        await _write_batch(db, outcome, [p for p in plans if p.action != CREATE], created)
        return outcome


async def _write_batch(db: Database, outcome: Outcome, updates: list[Plan], created: list[apply.Created]) -> None:
    """One transaction; should it fail on a constraint (a concurrent write took an external_id), each row is
    written in its own transaction, and the ones that fail are reported."""
    try:
        async with db.transaction(write=True) as session:
            counts, problems = await _write(session, updates, created)
    except IntegrityError:
        counts, problems = {}, []
        singles: list[tuple[int, list[Plan], list[apply.Created]]] = [(p.number, [p], []) for p in updates]
        singles += [(c.number, [], [c]) for c in created]
        for number, one_update, one_create in singles:
            try:
                async with db.transaction(write=True) as session:
                    one, found = await _write(session, one_update, one_create)
            except IntegrityError:
                one, found = {}, [Problem(number, "", "external_id", "", "is already used by another contact")]
            for key, n in one.items():
                counts[key] = counts.get(key, 0) + n
            problems += found
    for key, n in counts.items():
        outcome.add(key, n)
    outcome.problems += problems
    failed = len({p.row for p in problems})
    if failed:
        outcome.add("failed", failed)


async def _write(
    session: AsyncSession, updates: list[Plan], created: list[apply.Created]
) -> tuple[dict[str, int], list[Problem]]:
    """Write one batch; updates are re-planned against the rows read (and locked) here."""
    fresh = await apply.fresh_rows(session, [p.target.id for p in updates if p.action == UPDATE and p.target])
    versions = await apply.versions(session, [p.target.id for p in updates if p.action == UNCHANGED and p.target])
    problems: list[Problem] = []
    to_update: list[Plan] = []
    unchanged = 0
    for p in updates:
        assert p.target is not None
        row = fresh.get(p.target.id)
        version = row.version if row is not None else versions.get(p.target.id)
        if version is None:
            problems.append(Problem(p.number, "", "id", p.target.id, "the contact was deleted during the import"))
        elif version != p.target.version:
            problems.append(
                Problem(p.number, "", "version", str(version), "the contact changed during the import; run it again")
            )
        elif row is not None:
            p.target = row
            to_update.append(p)
        else:
            unchanged += 1
    written = await apply.write_creates(session, created)
    await apply.update(session, to_update, apply.Writes())
    counts = {"created": written, "updated": len(to_update), "unchanged": unchanged}
    return {k: n for k, n in counts.items() if n}, problems


# --- worker processes ------------------------------------------------------------------------------------

_worker_loop: asyncio.AbstractEventLoop | None = None
_worker_database: tuple[str, Database] | None = None  # (job id, its database)


def _start_worker(log_level: int) -> None:
    configure_logging("customer", logging.getLevelName(log_level))


def _process_in_worker(
    job_id: str, database_url: str, principal: Principal | None, tenant: str, chunk: Chunk
) -> Outcome:
    """A worker process keeps one event loop for its whole life, and one engine per job: connections opened
    for an earlier job would plan with the planner statistics of that time (Database.analyze)."""
    global _worker_loop, _worker_database
    if _worker_loop is None:
        _worker_loop = asyncio.new_event_loop()
    if _worker_database is None or _worker_database[0] != job_id:
        if _worker_database is not None:
            _worker_loop.run_until_complete(_worker_database[1].dispose())
        _worker_database = (job_id, Database(database_url))
    with tenant_scope(tenant, principal):
        return _worker_loop.run_until_complete(process(_worker_database[1], chunk))


def configured_workers() -> int:
    """CUSTOMER_IMPORT_WORKERS: worker processes for large imports (0: every import runs in the service's
    event loop); by default the number of cores, at most 4."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return max(1, min(4, os.cpu_count() or 1))
    if not raw.isdigit() or int(raw) > 64:
        raise ValueError(f"{WORKERS_ENV} must be a whole number from 0 to 64, not {raw!r}")
    return int(raw)


class ChunkRunner:
    """Runs `process` inline or in the worker pool, which starts on first use and stops with the service."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = configured_workers() if workers is None else workers
        self._pool: ProcessPoolExecutor | None = None

    def pooled(self, total_rows: int) -> bool:
        return self.workers > 0 and total_rows > INLINE_MAX_ROWS

    async def run(self, db: Database, job_id: str, chunk: Chunk, *, pooled: bool) -> Outcome:
        if not pooled:
            return await process(db, chunk)
        if self._pool is None:
            # Not fork: the service's threads (gRPC, database drivers) do not survive a fork.
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(logging.getLogger().getEffectiveLevel(),),
            )
            log.info("started import workers", extra={"workers": self.workers})
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, _process_in_worker, job_id, db.url, chunk.ctx.principal, require_tenant(), chunk
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
