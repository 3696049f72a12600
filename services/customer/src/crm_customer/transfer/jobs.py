"""Import jobs: the table, and the run.

The file is read and its columns resolved, rows sharing an id or external_id are refused, and the rest goes
a chunk of CHUNK rows at a time through `chunks.process`: load what the rows name, plan them, and write the
chunk in one transaction with its outbox events, audit entries and history (a dry run stops before
writing). A large file's chunks run in worker processes, several at once (crm_customer.transfer.chunks).
A row is never half-applied, and problems are stored as they are found.

The job row is updated after every chunk (status, counts, progress), so GetImportJob shows progress from
any replica. The run itself is an asyncio task of the replica that accepted the upload; it keeps the row's
update_time fresh (crm_kit.liveness), so a job whose process died is reported failed (`settle`), not
"running" forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Integer, String, Text, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from crm.customer.v1 import transfer_pb2
from crm_customer import settings
from crm_customer.custom_fields import CONTACT, Catalog
from crm_customer.models import Base
from crm_customer.transfer import apply, columns, reader, rows
from crm_customer.transfer.chunks import Chunk, ChunkRunner, Outcome
from crm_customer.transfer.rows import Context, Problem
from crm_kit.context import current_principal, require_tenant
from crm_kit.db import Database, Resource, TenantScoped
from crm_kit.db.base import UtcDateTime, utcnow
from crm_kit.errors import CrmError
from crm_kit.events import outbox
from crm_kit.liveness import INTERRUPTED, heartbeat, is_stale

log = logging.getLogger("crm_customer.transfer")

QUEUED, RUNNING, SUCCEEDED, FAILED, WITH_ERRORS = "queued", "running", "succeeded", "failed", "completed_with_errors"
ACTIVE = (QUEUED, RUNNING)
CHUNK = 1000  # rows loaded, planned and written together (one write transaction)
FIRST_PROBLEMS = 100


class ImportJob(Base, Resource):
    __tablename__ = "import_jobs"

    status: Mapped[str] = mapped_column(String(32), nullable=False, default=QUEUED)
    dry_run: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    match_email: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    format: Mapped[str] = mapped_column(String(8), nullable=False, default="")
    filename: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    total_rows: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    processed_rows: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    progress_percent: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    problem_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error: Mapped[str] = mapped_column(Text, nullable=False, default="")
    actor: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    finish_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class ImportProblem(Base, TenantScoped):
    __tablename__ = "import_problems"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    row: Mapped[int] = mapped_column(Integer, nullable=False)
    column: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    field: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    value: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    problem: Mapped[str] = mapped_column(Text, nullable=False, default="")


def problem_message(p: ImportProblem) -> transfer_pb2.ImportProblem:
    return transfer_pb2.ImportProblem(row=p.row, column=p.column, field=p.field, value=p.value, problem=p.problem)


def job_message(job: ImportJob, problems: Sequence[ImportProblem] = ()) -> transfer_pb2.ImportJob:
    msg = transfer_pb2.ImportJob(
        id=job.id,
        status=job.status,
        dry_run=job.dry_run,
        format=job.format,
        filename=job.filename,
        total_rows=job.total_rows,
        processed_rows=job.processed_rows,
        created=job.created,
        updated=job.updated,
        unchanged=job.unchanged,
        failed=job.failed,
        progress_percent=job.progress_percent,
        problem_count=job.problem_count,
        problems=[problem_message(p) for p in problems],
        error=job.error,
        match_email=job.match_email,
    )
    msg.create_time.FromDatetime(job.create_time)
    msg.update_time.FromDatetime(job.update_time)
    if job.finish_time is not None:
        msg.finish_time.FromDatetime(job.finish_time)
    return msg


async def settle(session: AsyncSession, job: ImportJob) -> ImportJob:
    """`job`, marked failed when it is queued or running but its run stopped beating (its process died)."""
    if job.status not in ACTIVE or not is_stale(job.update_time):
        return job
    job.status, job.finish_time, job.update_time = FAILED, utcnow(), utcnow()
    job.error = (
        f"{INTERRUPTED}, after {job.processed_rows} of {job.total_rows} rows; each chunk of {CHUNK} rows was "
        "written whole or not at all. Run the import again: rows with an external_id already imported are "
        "matched, not duplicated"
    )
    await session.flush()
    return job


async def first_problems(session: AsyncSession, job_id: str, limit: int = FIRST_PROBLEMS) -> list[ImportProblem]:
    stmt = select(ImportProblem).where(ImportProblem.job_id == job_id).order_by(ImportProblem.seq).limit(limit)
    return list((await session.execute(stmt)).scalars())


class Run:
    """One job's run; every method runs in the tenant and principal context of the StartImport call."""

    def __init__(
        self,
        db: Database,
        job_id: str,
        content: bytes,
        fmt: str,
        mapping: dict[str, str],
        dry_run: bool,
        match_email: bool,
        runner: ChunkRunner | None = None,
    ) -> None:
        self.db = db
        self.runner = runner or ChunkRunner(workers=0)
        self.job_id = job_id
        self.content = content
        self.fmt = fmt
        self.mapping = mapping
        self.dry_run = dry_run
        self.match_email = match_email
        self.counts = {"created": 0, "updated": 0, "unchanged": 0, "failed": 0}
        self.total = 0
        self.processed = 0
        self.chunks_done = 0
        self.problem_seq = 0
        self.pending_problems: list[Problem] = []

    # --- the job row -----------------------------------------------------------------------------------

    async def _save(self, session: AsyncSession, **values: Any) -> None:
        if self.pending_problems:
            rows_ = []
            for p in self.pending_problems:
                self.problem_seq += 1
                rows_.append(
                    {
                        "tenant_id": require_tenant(),
                        "job_id": self.job_id,
                        "seq": self.problem_seq,
                        "row": p.row,
                        "column": p.column[:255],
                        "field": p.field[:255],
                        "value": p.value[:255],
                        "problem": p.problem,
                    }
                )
            await session.execute(insert(ImportProblem.__table__), rows_)
            self.pending_problems = []
        await session.execute(
            update(ImportJob)
            .where(ImportJob.id == self.job_id)
            .values(**self.counts, problem_count=self.problem_seq, update_time=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )

    async def progress(self, processed: int, percent: int, **values: Any) -> None:
        async with self.db.transaction() as session:
            await self._save(session, processed_rows=processed, progress_percent=percent, **values)

    async def finish(self, status: str, error: str = "") -> None:
        async with self.db.transaction() as session:
            await self._save(session, status=status, error=error, progress_percent=100, finish_time=utcnow())

    # --- the run ---------------------------------------------------------------------------------------

    async def _beat(self) -> None:
        async with self.db.transaction() as session:
            await session.execute(
                update(ImportJob)
                .where(ImportJob.id == self.job_id, ImportJob.status.in_(ACTIVE))
                .values(update_time=utcnow())
                .execution_options(synchronize_session=False)
            )

    async def __call__(self) -> None:
        try:
            async with heartbeat(self._beat):
                await self._run()
        except asyncio.CancelledError:
            await asyncio.shield(self.finish(FAILED, "the service stopped during the import; run it again"))
            raise
        except Exception as exc:  # the job records the failure; the caller polls it
            log.exception("import job failed", extra={"job_id": self.job_id})
            message = exc.message if isinstance(exc, CrmError) else f"internal error: {type(exc).__name__}"
            try:
                await self.finish(FAILED, message)
            except Exception:
                log.exception("cannot record the failure of import job", extra={"job_id": self.job_id})

    async def _run(self) -> None:
        await self.progress(0, 0, status=RUNNING)
        try:
            table = await asyncio.to_thread(reader.read, self.fmt, self.content)
        except reader.UnreadableFile as exc:
            self.pending_problems.append(Problem(0, "", "content", "", str(exc)))
            await self.finish(FAILED, str(exc))
            return
        self.content = b""
        self.total = len(table.rows)
        async with self.db.transaction() as session:
            cfg = await settings.get_settings(session)
            catalog = await Catalog.load(session, CONTACT)
            await self._save(session, total_rows=self.total)
        cols, header_problems = columns.resolve(table.header, self.mapping, catalog.by_key)
        if header_problems:
            self.pending_problems += [Problem(1, h.column, h.field, h.column, h.problem) for h in header_problems]
            await self.finish(FAILED, "the header has problems; nothing was imported")
            return
        if not any(c.field not in (columns.ID,) for c in cols):
            self.pending_problems.append(Problem(1, "", "", "", "no column holds a contact field"))
            await self.finish(FAILED, "no column holds a contact field; nothing was imported")
            return
        inputs = rows.inputs(cols, table.rows)
        del table
        ctx = Context(cfg, catalog, current_principal(), self.match_email)
        await self.db.analyze("contacts")  # the lookups below are by primary key and external id
        await self._process(inputs, ctx)
        if not self.dry_run:
            await self.db.analyze("contacts")
        await self.finish(WITH_ERRORS if self.counts["failed"] else SUCCEEDED)

    async def _process(self, inputs: list[rows.RowInput], ctx: Context) -> None:
        """Chunk after chunk; with workers, as many chunks at once as there are workers, and one queued."""
        duplicate = rows.duplicates(inputs)
        stamp = None if self.dry_run else apply.Stamp.current()
        pooled = self.runner.pooled(len(inputs))
        at_once = self.runner.workers + 1 if pooled else 1
        running: deque[asyncio.Task[Outcome]] = deque()
        try:
            for start in range(0, len(inputs), CHUNK):
                chunk = inputs[start : start + CHUNK]
                found = {i.number: duplicate[i.number] for i in chunk if i.number in duplicate}
                job = Chunk(chunk, ctx, found, stamp)
                running.append(asyncio.create_task(self.runner.run(self.db, self.job_id, job, pooled=pooled)))
                if len(running) >= at_once:
                    await self._record(await running.popleft(), pooled=pooled)
            while running:
                await self._record(await running.popleft(), pooled=pooled)
        finally:
            for task in running:
                task.cancel()

    async def _record(self, outcome: Outcome, *, pooled: bool) -> None:
        for key, n in outcome.counts.items():
            self.counts[key] += n
        self.pending_problems += outcome.problems
        self.processed += outcome.rows
        self.chunks_done += 1
        if not self.dry_run and self.chunks_done & (self.chunks_done - 1) == 0:
            # After 1, 2, 4, 8, ... chunks: the statistics follow a table that grows from nothing.
            await self.db.analyze("contacts")
        if pooled and not self.dry_run:
            outbox.notify_relays()  # a worker process committed events: publish them now, not at the next poll
        await self.progress(self.processed, self._percent(self.processed))

    def _percent(self, done: int) -> int:
        return min(99, int(done * 100 / self.total)) if self.total else 100


async def count_problems(session: AsyncSession, job_id: str) -> int:
    return int(await session.scalar(select(func.count()).where(ImportProblem.job_id == job_id)) or 0)
