"""The servicedesk service as the kit runs it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from crm.servicedesk.v1 import servicedesk_pb2, servicedesk_pb2_grpc
from crm_kit.contacts import ContactLink, ContactProjection, ContactVerifier, customer_address
from crm_kit.grpc.server import Servicer
from crm_kit.runtime import ServiceRuntime, ServiceSpec, Subscription
from crm_servicedesk.models import ContactRef, Ticket
from crm_servicedesk.privacy import PERSONAL_DATA
from crm_servicedesk.servicer import ServicedeskServicer

CONTACTS = ContactProjection(ContactRef, links=[ContactLink(Ticket)])  # merges repoint tickets


def servicers(rt: ServiceRuntime) -> Sequence[Servicer]:
    verifier = ContactVerifier(rt.db, CONTACTS, customer_address("servicedesk"))
    return [
        Servicer(
            servicedesk_pb2_grpc.add_ServicedeskServiceServicer_to_server,
            ServicedeskServicer(rt.db, verifier),
            servicedesk_pb2.DESCRIPTOR.services_by_name["ServicedeskService"].full_name,
        )
    ]


def subscriptions(rt: ServiceRuntime) -> Sequence[Subscription]:
    return [CONTACTS.subscription("servicedesk-contacts")]


SPEC = ServiceSpec(
    name="servicedesk",
    default_grpc_port=50054,
    migrations=Path(__file__).parent / "migrations",
    servicers=servicers,
    subscriptions=subscriptions,
    personal_data=PERSONAL_DATA,
)
