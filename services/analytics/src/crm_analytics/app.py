"""The analytics service as the kit runs it: one durable consumer folding every event into the read model,
and AnalyticsService answering from it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from crm.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from crm_analytics import rebuild
from crm_analytics.fold import ALL_EVENTS, CONSUMER, handle
from crm_analytics.privacy import PERSONAL_DATA
from crm_analytics.servicer import AnalyticsServicer
from crm_kit.grpc.server import Servicer
from crm_kit.runtime import Command, ServiceRuntime, ServiceSpec, Subscription


def servicers(rt: ServiceRuntime) -> Sequence[Servicer]:
    return [
        Servicer(
            analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server,
            AnalyticsServicer(rt.db),
            analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name,
        )
    ]


def subscriptions(rt: ServiceRuntime) -> Sequence[Subscription]:
    return [Subscription(name=CONSUMER, subjects=[ALL_EVENTS], handler=handle)]


SPEC = ServiceSpec(
    name="analytics",
    default_grpc_port=50055,
    migrations=Path(__file__).parent / "migrations",
    servicers=servicers,
    subscriptions=subscriptions,
    audit=False,  # a read model: no audit log of its own
    personal_data=PERSONAL_DATA,
    commands=[
        Command(
            "rebuild",
            "rebuild the read model by replaying the event stream (run with the owner database URL)",
            rebuild.command,
            rebuild.arguments,
        )
    ],
)
