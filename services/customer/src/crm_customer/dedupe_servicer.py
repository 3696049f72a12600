"""crm.customer.v1.DedupeService: duplicates of a contact, the batch dedupe job, merge and unmerge."""

from __future__ import annotations

import asyncio

import grpc
from sqlalchemy.exc import IntegrityError

from crm.customer.v1 import dedupe_pb2, dedupe_pb2_grpc
from crm_customer import dedupe, history, matching, merge, settings
from crm_customer.dedupe import DedupeJobRow
from crm_customer.servicer import contact_message
from crm_kit.context import current_principal, require_tenant
from crm_kit.crud import ResourceStore
from crm_kit.db import Database, utcnow, uuid7
from crm_kit.errors import FailedPrecondition, FieldViolation, InvalidArgument, PermissionDenied, Violations

MAX_CANDIDATES = 100


def require_sees_everything() -> None:
    principal = current_principal()
    if principal is not None and not principal.sees_everything:
        raise PermissionDenied("dedupe jobs cover the whole tenant: they need the admin or manager role")


class DedupeServicer(dedupe_pb2_grpc.DedupeServiceServicer):
    def __init__(self, db: Database, contacts: ResourceStore[merge.Contact]) -> None:
        self.db = db
        self.contacts = contacts
        self.tasks: set[asyncio.Task[None]] = set()

    async def FindDuplicates(
        self, request: dedupe_pb2.FindDuplicatesRequest, context: grpc.aio.ServicerContext
    ) -> dedupe_pb2.FindDuplicatesResponse:
        v = Violations()
        contact_id = request.contact_id.strip()
        if not contact_id:
            v.add("contact_id", "is required")
        min_score = dedupe.score_arg(v, "min_score", request.min_score, 0)  # 0: the tenant's threshold
        if request.page_size and not 1 <= request.page_size <= MAX_CANDIDATES:
            v.add("page_size", f"must be between 1 and {MAX_CANDIDATES}")
        v.raise_if_any()
        async with self.db.transaction() as session:
            row = await self.contacts.get(session, contact_id)  # NOT_FOUND: another tenant's or owner's
            if not min_score:
                min_score = (await settings.get_settings(session)).duplicate_threshold
            found = await dedupe.find_candidates(
                session,
                matching.profile(matching.row_values(row)),
                min_score=min_score,
                where=[self.contacts.visible()],
                limit=request.page_size or 20,
            )
        return dedupe_pb2.FindDuplicatesResponse(items=[dedupe.candidate_message(p, m) for p, m in found])

    async def StartDedupeJob(
        self, request: dedupe_pb2.StartDedupeJobRequest, context: grpc.aio.ServicerContext
    ) -> dedupe_pb2.DedupeJob:
        require_sees_everything()
        v = Violations()
        min_score = dedupe.score_arg(v, "min_score", request.min_score, dedupe.JOB_MIN_SCORE)
        v.raise_if_any()
        tenant = require_tenant()
        async with self.db.transaction() as session:
            row = DedupeJobRow(id=uuid7(), status=dedupe.PENDING, min_score=min_score, created_by=history.actor())
            row.create_time = row.heartbeat_time = utcnow()
            session.add(row)
            await session.flush()
            message = dedupe.job_message(row)
        task = asyncio.create_task(dedupe.run_job(self.db, tenant, row.id), name=f"dedupe-job-{row.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return message

    async def GetDedupeJob(
        self, request: dedupe_pb2.GetDedupeJobRequest, context: grpc.aio.ServicerContext
    ) -> dedupe_pb2.DedupeJob:
        require_sees_everything()
        async with self.db.transaction() as session:
            return dedupe.job_message(await dedupe.get_job(session, request.id.strip()))

    async def ListDuplicatePairs(
        self, request: dedupe_pb2.ListDuplicatePairsRequest, context: grpc.aio.ServicerContext
    ) -> dedupe_pb2.ListDuplicatePairsResponse:
        require_sees_everything()
        if not request.job_id.strip():
            raise InvalidArgument.field("job_id", "is required")
        async with self.db.transaction() as session:
            job = await dedupe.get_job(session, request.job_id.strip())
            items, token = await dedupe.list_pairs(session, job, request, [self.contacts.visible()])
        return dedupe_pb2.ListDuplicatePairsResponse(items=items, next_page_token=token)

    async def MergeContacts(
        self, request: dedupe_pb2.MergeContactsRequest, context: grpc.aio.ServicerContext
    ) -> dedupe_pb2.ContactMerge:
        try:
            async with self.db.transaction() as session:
                record, survivor = await merge.merge(session, self.contacts, request)
                message = merge.merge_message(record, contact_message)
                message.survivor.CopyFrom(contact_message(survivor))
        except IntegrityError:  # a concurrent merge or write got there first
            raise FailedPrecondition(
                "the contacts changed during the merge; try again",
                [FieldViolation("duplicate_id", "changed during the merge")],
            ) from None
        return message

    async def UnmergeContacts(
        self, request: dedupe_pb2.UnmergeContactsRequest, context: grpc.aio.ServicerContext
    ) -> dedupe_pb2.ContactMerge:
        try:
            async with self.db.transaction() as session:
                record, survivor, duplicate = await merge.unmerge(session, self.contacts, request.merge_id)
                message = merge.merge_message(record, contact_message)
                message.survivor.CopyFrom(contact_message(survivor))
                message.duplicate.CopyFrom(contact_message(duplicate))
        except IntegrityError:  # e.g. another contact took the duplicate's external id meanwhile
            raise FailedPrecondition(
                "the duplicate cannot come back: another contact now uses its external_id",
                [FieldViolation("merge_id", "the duplicate's external_id is taken")],
            ) from None
        return message

    async def ListContactMerges(
        self, request: dedupe_pb2.ListContactMergesRequest, context: grpc.aio.ServicerContext
    ) -> dedupe_pb2.ListContactMergesResponse:
        contact_id = request.contact_id.strip()
        if not contact_id:
            raise InvalidArgument.field("contact_id", "is required")
        async with self.db.transaction() as session:
            await self.contacts.get(session, contact_id)  # NOT_FOUND: another tenant's or owner's
            rows = await merge.list_merges(session, contact_id)
            items = [merge.merge_message(r, contact_message) for r in rows]
        return dedupe_pb2.ListContactMergesResponse(items=items)
