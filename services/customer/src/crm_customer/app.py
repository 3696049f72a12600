"""The customer service as the kit runs it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from crm.customer.v1 import (
    custom_fields_pb2,
    custom_fields_pb2_grpc,
    customer_pb2,
    customer_pb2_grpc,
    dedupe_pb2,
    dedupe_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
    timeline_pb2,
    timeline_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
)
from crm_customer import merge, timeline
from crm_customer.custom_fields_servicer import CustomFieldServicer
from crm_customer.dedupe_servicer import DedupeServicer
from crm_customer.privacy import PERSONAL_DATA
from crm_customer.privacy_servicer import PrivacyServicer
from crm_customer.servicer import CustomerServicer
from crm_customer.timeline_servicer import TimelineServicer
from crm_customer.transfer.servicer import TransferServicer
from crm_kit.db import Database
from crm_kit.grpc.server import Servicer
from crm_kit.runtime import Chore, Command, ServiceRuntime, ServiceSpec, Subscription
from crm_kit.settings import KitSettings, ServiceSettings


def servicers(rt: ServiceRuntime) -> Sequence[Servicer]:
    customer = CustomerServicer(rt.db)
    return [
        Servicer(
            customer_pb2_grpc.add_CustomerServiceServicer_to_server,
            customer,
            customer_pb2.DESCRIPTOR.services_by_name["CustomerService"].full_name,
        ),
        Servicer(
            dedupe_pb2_grpc.add_DedupeServiceServicer_to_server,
            DedupeServicer(rt.db, customer.contacts),
            dedupe_pb2.DESCRIPTOR.services_by_name["DedupeService"].full_name,
        ),
        Servicer(
            timeline_pb2_grpc.add_TimelineServiceServicer_to_server,
            TimelineServicer(rt.db),
            timeline_pb2.DESCRIPTOR.services_by_name["TimelineService"].full_name,
        ),
        Servicer(
            custom_fields_pb2_grpc.add_CustomFieldServiceServicer_to_server,
            CustomFieldServicer(rt.db),
            custom_fields_pb2.DESCRIPTOR.services_by_name["CustomFieldService"].full_name,
        ),
        Servicer(
            privacy_pb2_grpc.add_PrivacyServiceServicer_to_server,
            PrivacyServicer(rt.db, rt.bus, rt.kit.events_stream),
            privacy_pb2.DESCRIPTOR.services_by_name["PrivacyService"].full_name,
        ),
        Servicer(
            transfer_pb2_grpc.add_TransferServiceServicer_to_server,
            TransferServicer(rt.db, on_stop=rt.on_stop),
            transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name,
        ),
    ]


def subscriptions(rt: ServiceRuntime) -> Sequence[Subscription]:
    return [timeline.subscription()]


async def purge_merges(args: argparse.Namespace, settings: ServiceSettings, kit: KitSettings) -> None:
    """`crm-customer purge-merges`: what the hourly chore does, now (e.g. after lowering a retention)."""
    db = Database(settings.database_url)
    try:
        purged = await merge.purge_expired(db)
    finally:
        await db.dispose()
    print(f"customer: emptied the snapshots of {purged} expired contact merges")


SPEC = ServiceSpec(
    name="customer",
    default_grpc_port=50051,
    migrations=Path(__file__).parent / "migrations",
    servicers=servicers,
    subscriptions=subscriptions,
    personal_data=PERSONAL_DATA,
    # Expired merges keep who merged what and when, not the person's data (crm_customer.merge).
    chores=[Chore("purge-merges", merge.PURGE_INTERVAL.total_seconds(), merge.purge_chore)],
    commands=[
        Command(
            "purge-merges",
            "empty the snapshots of expired contact merges of every tenant (the service does it hourly)",
            purge_merges,
        )
    ],
)
