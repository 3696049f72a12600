"""Helpers every service's gRPC tests share: reading field violations, building masks, reading the outbox."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import select

from crm_kit.context import system_scope
from crm_kit.db import Database
from crm_kit.db.system_tables import OutboxMessage
from crm_kit.events.envelope import Event


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """{field: description} from the google.rpc.BadRequest details of a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    out: dict[str, str] = {}
    for detail in status.details if status else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.update({v.field: v.description for v in bad.field_violations})
    return out


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def outbox(db: Database, tenant_id: str) -> list[Event]:
    """Every event the service recorded for `tenant_id`, oldest first."""
    with system_scope():
        async with db.transaction() as s:
            rows = await s.scalars(
                select(OutboxMessage.payload).where(OutboxMessage.tenant_id == tenant_id).order_by(OutboxMessage.id)
            )
            return [Event.from_json(p) for p in rows]
