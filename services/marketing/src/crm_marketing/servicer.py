"""crm.marketing.v1.MarketingService."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2
from sqlalchemy import ColumnElement

from crm.marketing.v1 import marketing_pb2, marketing_pb2_grpc
from crm_kit.crud import ResourceStore
from crm_kit.db import Database
from crm_kit.errors import Violations
from crm_kit.protos import mask_paths, to_message
from crm_marketing import rules
from crm_marketing.models import Campaign


def campaign_message(row: Campaign) -> marketing_pb2.Campaign:
    return to_message(row, marketing_pb2.Campaign)


class MarketingServicer(marketing_pb2_grpc.MarketingServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db
        self.campaigns = ResourceStore(Campaign, context="marketing", entity="campaign", to_message=campaign_message)

    async def CreateCampaign(
        self, request: marketing_pb2.CreateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> marketing_pb2.Campaign:
        values = rules.campaign_values(request.campaign, rules.CAMPAIGN_FIELDS)
        async with self.db.transaction() as session:
            row = await self.campaigns.create(session, values)
        return campaign_message(row)

    async def GetCampaign(
        self, request: marketing_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> marketing_pb2.Campaign:
        async with self.db.transaction() as session:
            return campaign_message(await self.campaigns.get(session, request.id))

    async def UpdateCampaign(
        self, request: marketing_pb2.UpdateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> marketing_pb2.Campaign:
        paths = mask_paths(request.update_mask, rules.CAMPAIGN_FIELDS)
        values = rules.campaign_values(request.campaign, paths)
        async with self.db.transaction() as session:
            row, _ = await self.campaigns.update(session, request.campaign.id, values, request.campaign.version)
            # One date may change alone: check the pair as stored (raising rolls the update back).
            v = Violations()
            rules.check_dates(v, row.start_date, row.end_date)
            v.raise_if_any()
        return campaign_message(row)

    async def DeleteCampaign(
        self, request: marketing_pb2.DeleteCampaignRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        async with self.db.transaction() as session:
            await self.campaigns.delete(session, request.id, request.version)
        return empty_pb2.Empty()

    async def ListCampaigns(
        self, request: marketing_pb2.ListCampaignsRequest, context: grpc.aio.ServicerContext
    ) -> marketing_pb2.ListCampaignsResponse:
        filters = rules.list_filters(request)
        where: list[ColumnElement[bool]] = [
            getattr(Campaign, name) == value for name, value in filters.items() if value
        ]
        async with self.db.transaction() as session:
            rows, token = await self.campaigns.list(
                session, where=where, filters=filters, page_size=request.page_size, page_token=request.page_token
            )
        return marketing_pb2.ListCampaignsResponse(campaigns=[campaign_message(r) for r in rows], next_page_token=token)
