"""crm.common.v1.AuditService: reading a service's audit log. Every service serves it (the kit runtime adds
it to every ServiceSpec with `audit=True`); only admins and managers may call it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import struct_pb2
from sqlalchemy import ColumnElement, select

from crm.common.v1 import audit_pb2, audit_pb2_grpc
from crm_kit import pagination
from crm_kit.audit import AuditEntry
from crm_kit.context import current_principal
from crm_kit.db.engine import Database
from crm_kit.errors import PermissionDenied, Violations
from crm_kit.grpc.server import Servicer

MAX_FILTER_LENGTH = 128


def entry_message(entry: AuditEntry) -> audit_pb2.AuditEntry:
    message = audit_pb2.AuditEntry(
        id=entry.id,
        actor=entry.actor,
        actor_roles=list(entry.actor_roles or []),
        action=entry.action,
        entity=entry.entity,
        entity_id=entry.entity_id,
        trace_id=entry.trace_id,
    )
    message.time.FromDatetime(entry.time)
    if entry.before is not None:
        message.before.CopyFrom(_struct(entry.before))
    if entry.after is not None:
        message.after.CopyFrom(_struct(entry.after))
    return message


def _struct(document: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(document)
    return struct


def _timestamp(v: Violations, field: str, raw: str) -> datetime | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        v.add(field, "must be an RFC 3339 timestamp such as 2025-01-31T09:00:00Z")
        return None
    if value.tzinfo is None:
        v.add(field, "must name its time zone (Z or an offset such as +08:00)")
        return None
    return value.astimezone(UTC)


def list_filters(request: audit_pb2.ListAuditEntriesRequest) -> tuple[dict[str, Any], list[ColumnElement[bool]]]:
    """The request's filters (for the page token's fingerprint) and the where-clause; INVALID_ARGUMENT
    naming every bad field."""
    v = Violations()
    filters: dict[str, Any] = {
        "entity": request.entity.strip(),
        "entity_id": request.entity_id.strip(),
        "actor": request.actor.strip(),
        "start_time": request.start_time.strip(),
        "end_time": request.end_time.strip(),
    }
    for name in ("entity", "entity_id", "actor"):
        if len(filters[name]) > MAX_FILTER_LENGTH:
            v.add(name, f"must be at most {MAX_FILTER_LENGTH} characters")
    start = _timestamp(v, "start_time", request.start_time)
    end = _timestamp(v, "end_time", request.end_time)
    if start is not None and end is not None and end <= start:
        v.add("end_time", "must be after start_time")
    v.raise_if_any()
    where: list[ColumnElement[bool]] = []
    if filters["entity"]:
        where.append(AuditEntry.entity == filters["entity"])
    if filters["entity_id"]:
        where.append(AuditEntry.entity_id == filters["entity_id"])
    if filters["actor"]:
        where.append(AuditEntry.actor == filters["actor"])
    if start is not None:
        where.append(AuditEntry.time >= start)
    if end is not None:
        where.append(AuditEntry.time < end)
    return filters, where


def require_reader() -> None:
    principal = current_principal()
    if principal is None or not principal.sees_everything:
        raise PermissionDenied("reading the audit log needs the admin or manager role")


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def ListAuditEntries(
        self, request: audit_pb2.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.ListAuditEntriesResponse:
        require_reader()
        filters, where = list_filters(request)
        size = pagination.page_size(request.page_size)
        before = pagination.decode_token(request.page_token, filters)
        stmt = select(AuditEntry).where(*where)
        if before:
            stmt = stmt.where(AuditEntry.id < before)
        stmt = stmt.order_by(AuditEntry.id.desc()).limit(size + 1)  # newest first: ids are UUIDv7
        async with self.db.transaction() as session:
            rows = list((await session.execute(stmt)).scalars())
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = pagination.encode_token(rows[-1].id, filters)
        return audit_pb2.ListAuditEntriesResponse(entries=[entry_message(r) for r in rows], next_page_token=token)


def audit_servicer(db: Database) -> Servicer:
    return Servicer(
        audit_pb2_grpc.add_AuditServiceServicer_to_server,
        AuditServicer(db),
        audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    )
