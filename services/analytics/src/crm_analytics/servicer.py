"""crm.analytics.v1.AnalyticsService: summaries read from the tenant's read model."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal, localcontext

import grpc
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from crm.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from crm.common.v1 import common_pb2
from crm_analytics.models import AccountView, CampaignView, ContactView, OpportunityView, TenantStats, TicketView
from crm_kit.db import Database

OPEN_OPPORTUNITY = "open"
CLOSED_TICKET_STATUSES = ("resolved", "closed")
SUM_PRECISION = 100  # significant digits; the default context's 28 could round large sums


async def _count_by(
    session: AsyncSession, column: InstrumentedAttribute[str], *where: ColumnElement[bool]
) -> list[common_pb2.CountBucket]:
    stmt = select(column, func.count()).where(*where).group_by(column)
    rows = sorted((key, count) for key, count in await session.execute(stmt))  # code point order, any backend
    return [common_pb2.CountBucket(key=key, count=count) for key, count in rows]


async def _pipeline(session: AsyncSession) -> tuple[int, list[common_pb2.MoneyBucket]]:
    """Open opportunities by (stage, currency), summed with Decimal in Python: SQLite has no exact decimal."""
    stmt = select(OpportunityView.stage, OpportunityView.currency, OpportunityView.amount).where(
        OpportunityView.status == OPEN_OPPORTUNITY, OpportunityView.deleted.is_(False)
    )
    counts: dict[tuple[str, str], int] = defaultdict(int)
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    with localcontext(prec=SUM_PRECISION):  # exact: amounts are at most 64 characters
        for stage, currency, amount in await session.execute(stmt):
            counts[stage, currency] += 1
            totals[stage, currency] += Decimal(amount)
    buckets = [
        common_pb2.MoneyBucket(key=stage, currency=currency, count=counts[stage, currency], amount=format(total, "f"))
        for (stage, currency), total in sorted(totals.items())
    ]
    return sum(counts.values()), buckets


async def _count(session: AsyncSession, model: type[ContactView] | type[AccountView]) -> int:
    stmt = select(func.count(model.id)).where(model.deleted.is_(False))
    return int((await session.execute(stmt)).scalar_one())


async def build_summary(session: AsyncSession) -> analytics_pb2.Summary:
    """The summary of the tenant in context (the ORM guard confines every query to it).

    The stats row is read first: each query may see a newer state than the one before it (SQLite, and
    PostgreSQL in READ COMMITTED, snapshot per statement), so the counts then reflect at least the
    `events_processed` events the summary reports, never fewer.
    """
    stats = (await session.execute(select(TenantStats))).scalar_one_or_none()
    open_count, pipeline = await _pipeline(session)
    summary = analytics_pb2.Summary(
        contact_count=await _count(session, ContactView),
        account_count=await _count(session, AccountView),
        open_opportunity_count=open_count,
        pipeline_by_stage=pipeline,
        open_tickets_by_priority=await _count_by(
            session,
            TicketView.priority,
            TicketView.status.not_in(CLOSED_TICKET_STATUSES),
            TicketView.deleted.is_(False),
        ),
        campaigns_by_status=await _count_by(session, CampaignView.status, CampaignView.deleted.is_(False)),
    )
    if stats is not None:
        summary.events_processed = stats.events_processed
        if stats.as_of is not None:
            summary.as_of.FromDatetime(stats.as_of)
    return summary


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def GetSummary(
        self, request: analytics_pb2.GetSummaryRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.Summary:
        async with self.db.transaction() as session:
            return await build_summary(session)
