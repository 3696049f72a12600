"""crm.customer.v1.TimelineService: record, edit and list a contact's interaction timeline."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from crm.customer.v1 import timeline_pb2, timeline_pb2_grpc
from crm_customer import timeline
from crm_customer.timeline import Interaction, interaction_message
from crm_kit import pagination, validation
from crm_kit.access import OwnerAccess, restricted
from crm_kit.context import current_principal
from crm_kit.crud import ResourceStore
from crm_kit.db import Database, utcnow
from crm_kit.errors import FailedPrecondition, InvalidArgument, NotFound, Violations
from crm_kit.protos import mask_paths

OWNER = OwnerAccess("owner_id")


def _caller() -> str:
    principal = current_principal()
    return principal.subject if principal is not None else ""


class TimelineServicer(timeline_pb2_grpc.TimelineServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db
        # No owner_field: who may see an entry follows its contact (a member sees the whole timeline of
        # the contacts they own), checked here through `timeline.require_contact`.
        self.store = ResourceStore(
            Interaction, context="customer", entity=timeline.ENTITY, to_message=interaction_message
        )

    async def _entry(self, session: AsyncSession, id_: str, *, for_update: bool = False) -> Interaction:
        """An entry of this tenant that the caller may see (members: of a contact they own)."""
        if not id_.strip():
            raise InvalidArgument.field("id", "is required")
        row = await self.store.get(session, id_, for_update=for_update)
        if restricted(current_principal()):
            try:
                await timeline.require_contact(session, row.contact_id)
            except NotFound:
                raise NotFound(timeline.ENTITY, id_) from None
        return row

    @staticmethod
    def _writable(row: Interaction) -> None:
        if row.read_only:
            raise FailedPrecondition(
                f"interaction {row.id!r} is a {row.kind} entry learned from {row.source} events and cannot be "
                f"changed here; only {', '.join(timeline.RECORDED_KINDS)} entries can"
            )

    async def CreateInteraction(
        self, request: timeline_pb2.CreateInteractionRequest, context: grpc.aio.ServicerContext
    ) -> timeline_pb2.Interaction:
        v = Violations()
        given = {c.strip() for c in (request.contact_id, request.interaction.contact_id) if c.strip()}
        if len(given) > 1:
            v.add("contact_id", "contact_id and interaction.contact_id name different contacts")
        contact_id = validation.reference(v, "contact_id", next(iter(given), ""), required=True)
        values = timeline.recorded_values(request.interaction, owner=_caller(), now=utcnow(), v=v)
        OWNER.on_create(values)
        values.update(contact_id=contact_id, source=timeline.RECORDED_SOURCE, event_id="")
        async with self.db.transaction() as session:
            await timeline.require_contact(session, contact_id)
            row = await self.store.create(session, values)
        return interaction_message(row)

    async def GetInteraction(
        self, request: timeline_pb2.GetInteractionRequest, context: grpc.aio.ServicerContext
    ) -> timeline_pb2.Interaction:
        async with self.db.transaction() as session:
            return interaction_message(await self._entry(session, request.id))

    async def UpdateInteraction(
        self, request: timeline_pb2.UpdateInteractionRequest, context: grpc.aio.ServicerContext
    ) -> timeline_pb2.Interaction:
        paths = mask_paths(request.update_mask, timeline.MUTABLE_FIELDS)
        change = request.interaction
        async with self.db.transaction() as session:
            row = await self._entry(session, change.id, for_update=True)
            self._writable(row)
            merged = timeline.merged_message(row, change, paths)
            if "occurred_at" in paths and not change.HasField("occurred_at"):
                raise InvalidArgument.field("occurred_at", "is required")
            checked = timeline.recorded_values(merged, owner=_caller(), now=utcnow())
            values: dict[str, Any] = {p: checked[p] for p in paths}
            OWNER.on_update(row, values)
            row, _ = await self.store.update(session, row.id, values, change.version)
        return interaction_message(row)

    async def DeleteInteraction(
        self, request: timeline_pb2.DeleteInteractionRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        async with self.db.transaction() as session:
            row = await self._entry(session, request.id, for_update=True)
            self._writable(row)
            await self.store.delete(session, row.id, request.version)
        return empty_pb2.Empty()

    async def ListTimeline(
        self, request: timeline_pb2.ListTimelineRequest, context: grpc.aio.ServicerContext
    ) -> timeline_pb2.ListTimelineResponse:
        v = Violations()
        contact_id = validation.reference(v, "contact_id", request.contact_id, required=True)
        kinds: list[str] = []
        for raw in request.kind:
            kind = raw.strip().lower()
            if not kind or len(kind) > 64 or not set(kind) <= timeline.NAME_CHARS:
                v.add("kind", f"{raw!r} is not a kind; known kinds: {', '.join(timeline.KNOWN_KINDS)}")
            elif kind not in kinds:
                kinds.append(kind)
        kinds.sort()
        since = timeline.parse_time(v, "since", request.since)
        until = timeline.parse_time(v, "until", request.until)
        if since is not None and until is not None and since >= until:
            v.add("until", "must be later than since")
        try:
            pagination.page_size(request.page_size)
        except InvalidArgument as exc:
            v.items.extend(exc.violations)
        filters = {
            "contact_id": contact_id,
            "kind": kinds,
            "since": since.isoformat() if since else "",
            "until": until.isoformat() if until else "",
        }
        async with self.db.transaction() as session:
            for kind in await timeline.unknown_kinds(session, kinds):
                v.add("kind", f"unknown kind {kind!r}; known kinds: {', '.join(timeline.KNOWN_KINDS)}")
            v.raise_if_any()  # every problem with the request at once, before anything about the contact
            await timeline.require_contact(session, contact_id)
            rows, token = await timeline.list_timeline(
                session,
                contact_id,
                kinds=kinds,
                since=since,
                until=until,
                page_size=request.page_size,
                page_token=request.page_token,
                filters=filters,
            )
        return timeline_pb2.ListTimelineResponse(items=[interaction_message(r) for r in rows], next_page_token=token)
