"""crm.customer.v1.TransferService: import jobs and exports."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable

import grpc
from sqlalchemy import select

from crm.customer.v1 import transfer_pb2, transfer_pb2_grpc
from crm_customer import history
from crm_customer.transfer import columns, export, jobs, reader
from crm_customer.transfer.chunks import ChunkRunner
from crm_customer.transfer.jobs import ImportJob, ImportProblem
from crm_kit import pagination
from crm_kit.access import restricted
from crm_kit.context import current_principal
from crm_kit.db import Database
from crm_kit.db.ids import uuid7
from crm_kit.errors import InvalidArgument, NotFound, Violations

REPORT_HEADER = ("row", "column", "field", "value", "problem")


class TransferServicer(transfer_pb2_grpc.TransferServiceServicer):
    def __init__(self, db: Database, *, on_stop: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.db = db
        self.tasks: set[asyncio.Task[None]] = set()  # running jobs (kept referenced until done)
        self.runner = ChunkRunner()  # reads CUSTOMER_IMPORT_WORKERS: a bad value stops the service starting
        if on_stop is not None:
            on_stop(self.runner.close)

    async def StartImport(
        self, request: transfer_pb2.StartImportRequest, context: grpc.aio.ServicerContext
    ) -> transfer_pb2.ImportJob:
        v = Violations()
        content = bytes(request.content)
        if not content:
            v.add("content", "the file is empty")
        fmt = reader.guess_format(request.format, request.filename, request.content_type, content)
        if fmt not in reader.FORMATS:
            v.add("format", f"must be one of: {', '.join(reader.FORMATS)}")
        filename = request.filename.strip().replace("\\", "/").rsplit("/", 1)[-1][:255]
        v.raise_if_any()
        mapping = columns.parse_mapping(request.mapping)
        async with self.db.transaction() as session:
            job = ImportJob(
                id=uuid7(),
                status=jobs.QUEUED,
                dry_run=request.dry_run,
                match_email=request.match_email,
                format=fmt,
                filename=filename,
                actor=history.actor(),
                error="",
            )
            session.add(job)
            await session.flush()
            reply = jobs.job_message(job)
        run = jobs.Run(self.db, job.id, content, fmt, mapping, request.dry_run, request.match_email, self.runner)
        task = asyncio.create_task(run(), name=f"import-{job.id}")  # copies the tenant and principal context
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return reply

    async def _job(self, job_id: str) -> ImportJob:
        if not job_id.strip():
            raise InvalidArgument.field("id", "is required")
        async with self.db.transaction() as session:
            job = await session.scalar(select(ImportJob).where(ImportJob.id == job_id.strip()))
            principal = current_principal()
            if job is None or (restricted(principal) and principal is not None and job.actor != principal.subject):
                raise NotFound("import job", job_id)  # members see their own jobs only
            return await jobs.settle(session, job)

    async def GetImportJob(
        self, request: transfer_pb2.GetImportJobRequest, context: grpc.aio.ServicerContext
    ) -> transfer_pb2.ImportJob:
        job = await self._job(request.id)
        async with self.db.transaction() as session:
            problems = await jobs.first_problems(session, job.id)
        return jobs.job_message(job, problems)

    async def ListImportProblems(
        self, request: transfer_pb2.ListImportProblemsRequest, context: grpc.aio.ServicerContext
    ) -> transfer_pb2.ListImportProblemsResponse:
        if not request.job_id.strip():
            raise InvalidArgument.field("job_id", "is required")
        job = await self._job(request.job_id)
        size = pagination.page_size(request.page_size)
        filters = {"job_id": job.id}
        after = pagination.decode_token(request.page_token, filters)
        stmt = select(ImportProblem).where(ImportProblem.job_id == job.id)
        if after:
            if not after.isdigit():
                raise InvalidArgument.field("page_token", "is not a token of this list")
            stmt = stmt.where(ImportProblem.seq > int(after))
        async with self.db.transaction() as session:
            found = list((await session.execute(stmt.order_by(ImportProblem.seq).limit(size + 1))).scalars())
        token = ""
        if len(found) > size:
            found = found[:size]
            token = pagination.encode_token(str(found[-1].seq), filters)
        return transfer_pb2.ListImportProblemsResponse(
            problems=[jobs.problem_message(p) for p in found], next_page_token=token
        )

    async def GetImportReport(
        self, request: transfer_pb2.GetImportReportRequest, context: grpc.aio.ServicerContext
    ) -> transfer_pb2.ExportFile:
        job = await self._job(request.id)
        buffer = io.StringIO()
        buffer.write("\ufeff")
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(REPORT_HEADER)
        async with self.db.transaction() as session:
            stmt = select(ImportProblem).where(ImportProblem.job_id == job.id).order_by(ImportProblem.seq)
            for p in (await session.execute(stmt)).scalars():
                writer.writerow((p.row, p.column, p.field, p.value, p.problem))
        return transfer_pb2.ExportFile(
            content_type="text/csv; charset=utf-8",
            filename=f"import-{job.id}-problems.csv",
            content=buffer.getvalue().encode("utf-8"),
        )

    async def ExportContacts(
        self, request: transfer_pb2.ExportContactsRequest, context: grpc.aio.ServicerContext
    ) -> transfer_pb2.ExportFile:
        async with self.db.transaction() as session:
            return await export.export(session, request, current_principal())
