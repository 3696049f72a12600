"""The marketing service as the kit runs it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from crm.marketing.v1 import marketing_pb2, marketing_pb2_grpc
from crm_kit.grpc.server import Servicer
from crm_kit.runtime import ServiceRuntime, ServiceSpec
from crm_marketing.privacy import PERSONAL_DATA
from crm_marketing.servicer import MarketingServicer


def servicers(rt: ServiceRuntime) -> Sequence[Servicer]:
    return [
        Servicer(
            marketing_pb2_grpc.add_MarketingServiceServicer_to_server,
            MarketingServicer(rt.db),
            marketing_pb2.DESCRIPTOR.services_by_name["MarketingService"].full_name,
        )
    ]


SPEC = ServiceSpec(
    name="marketing",
    default_grpc_port=50053,
    migrations=Path(__file__).parent / "migrations",
    servicers=servicers,
    personal_data=PERSONAL_DATA,
)
