"""The sales service as the kit runs it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from crm.sales.v1 import sales_pb2, sales_pb2_grpc
from crm_kit.contacts import ContactProjection, ContactVerifier, NameCopy, customer_address
from crm_kit.grpc.server import Servicer
from crm_kit.runtime import ServiceRuntime, ServiceSpec, Subscription
from crm_sales.models import ContactRef, Opportunity
from crm_sales.privacy import PERSONAL_DATA
from crm_sales.servicer import SalesServicer

CONTACTS = ContactProjection(ContactRef, copies=[NameCopy(Opportunity, "contact_id", "contact_name")])


def servicers(rt: ServiceRuntime) -> Sequence[Servicer]:
    verifier = ContactVerifier(rt.db, CONTACTS, customer_address("sales"))
    return [
        Servicer(
            sales_pb2_grpc.add_SalesServiceServicer_to_server,
            SalesServicer(rt.db, verifier),
            sales_pb2.DESCRIPTOR.services_by_name["SalesService"].full_name,
        )
    ]


def subscriptions(rt: ServiceRuntime) -> Sequence[Subscription]:
    return [CONTACTS.subscription("sales-contacts")]


SPEC = ServiceSpec(
    name="sales",
    default_grpc_port=50052,
    migrations=Path(__file__).parent / "migrations",
    servicers=servicers,
    subscriptions=subscriptions,
    personal_data=PERSONAL_DATA,
)
