"""The customer service as the kit runs it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from crm.customer.v1 import customer_pb2, customer_pb2_grpc
from crm_customer.servicer import CustomerServicer
from crm_kit.grpc.server import Servicer
from crm_kit.runtime import ServiceRuntime, ServiceSpec


def servicers(rt: ServiceRuntime) -> Sequence[Servicer]:
    return [
        Servicer(
            customer_pb2_grpc.add_CustomerServiceServicer_to_server,
            CustomerServicer(rt.db),
            customer_pb2.DESCRIPTOR.services_by_name["CustomerService"].full_name,
        )
    ]


SPEC = ServiceSpec(
    name="customer",
    default_grpc_port=50051,
    migrations=Path(__file__).parent / "migrations",
    servicers=servicers,
)
