"""crm.sales.v1.SalesService."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2
from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession

from crm.sales.v1 import sales_pb2, sales_pb2_grpc
from crm_kit.contacts import ContactVerifier
from crm_kit.context import require_tenant
from crm_kit.crud import ResourceStore
from crm_kit.db import Database
from crm_kit.protos import mask_paths, to_message
from crm_sales import rules
from crm_sales.models import Opportunity
from crm_sales.pipeline import Pipeline, pipeline_for


def opportunity_message(row: Opportunity) -> sales_pb2.Opportunity:
    return to_message(row, sales_pb2.Opportunity)


class SalesServicer(sales_pb2_grpc.SalesServiceServicer):
    def __init__(self, db: Database, contacts: ContactVerifier) -> None:
        self.db = db
        self.contacts = contacts
        # Members see and change only the opportunities they own (crm_kit.access).
        self.opportunities = ResourceStore(
            Opportunity, context="sales", entity="opportunity", to_message=opportunity_message, owner_field="owner_id"
        )

    @staticmethod
    def pipeline() -> Pipeline:
        return pipeline_for(require_tenant())

    async def _emit_outcome(self, session: AsyncSession, row: Opportunity, pipeline: Pipeline) -> None:
        """`won` / `lost` when the opportunity has just entered a won or lost stage."""
        stage = pipeline.stage(row.stage)
        if stage.is_won:
            await self.opportunities.emit(session, row, "won", stage=row.stage)
        elif stage.is_lost:
            await self.opportunities.emit(session, row, "lost", stage=row.stage)

    async def CreateOpportunity(
        self, request: sales_pb2.CreateOpportunityRequest, context: grpc.aio.ServicerContext
    ) -> sales_pb2.Opportunity:
        pipeline = self.pipeline()
        values = rules.opportunity_values(request.opportunity, rules.OPPORTUNITY_FIELDS, pipeline)
        values["contact_name"] = await self.contacts.verify(values["contact_id"])
        async with self.db.transaction() as session:
            row = await self.opportunities.create(session, values)
            await self._emit_outcome(session, row, pipeline)
        return opportunity_message(row)

    async def GetOpportunity(
        self, request: sales_pb2.GetOpportunityRequest, context: grpc.aio.ServicerContext
    ) -> sales_pb2.Opportunity:
        async with self.db.transaction() as session:
            return opportunity_message(await self.opportunities.get(session, request.id))

    async def UpdateOpportunity(
        self, request: sales_pb2.UpdateOpportunityRequest, context: grpc.aio.ServicerContext
    ) -> sales_pb2.Opportunity:
        pipeline = self.pipeline()
        paths = mask_paths(request.update_mask, rules.OPPORTUNITY_FIELDS)
        values = rules.opportunity_values(request.opportunity, paths, pipeline)
        opp_id = request.opportunity.id
        if "contact_id" in values:
            name = await self.contacts.verify_change(self.opportunities, opp_id, values["contact_id"])
            if name is not None:
                values["contact_name"] = name
        async with self.db.transaction() as session:
            row, before = await self.opportunities.update(session, opp_id, values, request.opportunity.version)
            if "stage" in before:
                await self.opportunities.emit(
                    session, row, "stage_changed", from_stage=before["stage"], to_stage=row.stage
                )
                await self._emit_outcome(session, row, pipeline)
        return opportunity_message(row)

    async def DeleteOpportunity(
        self, request: sales_pb2.DeleteOpportunityRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        async with self.db.transaction() as session:
            await self.opportunities.delete(session, request.id, request.version)
        return empty_pb2.Empty()

    async def ListOpportunities(
        self, request: sales_pb2.ListOpportunitiesRequest, context: grpc.aio.ServicerContext
    ) -> sales_pb2.ListOpportunitiesResponse:
        filters = rules.list_filters(request, self.pipeline())
        where: list[ColumnElement[bool]] = [
            getattr(Opportunity, name) == value for name, value in filters.items() if value
        ]
        async with self.db.transaction() as session:
            rows, token = await self.opportunities.list(
                session, where=where, filters=filters, page_size=request.page_size, page_token=request.page_token
            )
        return sales_pb2.ListOpportunitiesResponse(
            opportunities=[opportunity_message(r) for r in rows], next_page_token=token
        )

    async def GetPipeline(
        self, request: sales_pb2.GetPipelineRequest, context: grpc.aio.ServicerContext
    ) -> sales_pb2.Pipeline:
        return self.pipeline().to_message()
