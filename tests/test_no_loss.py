"""No loss, no double counting: nats-server is killed while contacts are being created and restarted later;
every contact still reaches analytics, exactly once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, select

from crm.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from crm.customer.v1 import customer_pb2, customer_pb2_grpc
from crm_analytics.app import SPEC as ANALYTICS
from crm_customer.app import SPEC as CUSTOMER
from crm_kit.context import system_scope
from crm_kit.db.system_tables import PENDING, OutboxMessage
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.nats import NatsServer
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer

pytestmark = pytest.mark.slow

CONTACTS = 300


async def test_killing_nats_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path, sqlite_databases: DatabaseFactory, token_issuer: TokenIssuer
) -> None:
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    customer = await start_service(
        CUSTOMER, sqlite_databases.create("chaos_customer"), nats_url=nats.url, verifier=token_issuer.verifier()
    )
    analytics = await start_service(
        ANALYTICS, sqlite_databases.create("chaos_analytics"), nats_url=nats.url, verifier=token_issuer.verifier()
    )
    tenant = "chaos-" + uuid.uuid4().hex[:8]
    metadata = token_issuer.metadata(tenant)
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{customer.port}") as ch_c,
            grpc.aio.insecure_channel(f"127.0.0.1:{analytics.port}") as ch_a,
        ):
            contacts = customer_pb2_grpc.CustomerServiceStub(ch_c)
            summary = analytics_pb2_grpc.AnalyticsServiceStub(ch_a)

            async def create(i: int) -> None:
                await contacts.CreateContact(
                    customer_pb2.CreateContactRequest(
                        contact=customer_pb2.Contact(first_name="客户", last_name=str(i))
                    ),
                    metadata=metadata,
                    timeout=30,
                )

            for i in range(CONTACTS // 3):
                await create(i)
            nats.kill()  # SIGKILL: no goodbye to clients
            for i in range(CONTACTS // 3, 2 * CONTACTS // 3):
                await create(i)  # the change commits; its event waits in the outbox
            await asyncio.sleep(1.0)
            nats.start()  # same port, same JetStream store
            for i in range(2 * CONTACTS // 3, CONTACTS):
                await create(i)

            async def counted() -> analytics_pb2.Summary:
                return await summary.GetSummary(analytics_pb2.GetSummaryRequest(), metadata=metadata, timeout=10)

            deadline = asyncio.get_running_loop().time() + 60
            s = await counted()
            while s.contact_count < CONTACTS and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.25)
                s = await counted()
            assert s.contact_count == CONTACTS
            await asyncio.sleep(1.0)  # let any stray redelivery land before checking for duplicates
            s = await counted()
            assert s.contact_count == CONTACTS
            assert s.events_processed == CONTACTS, "an event was applied twice"

        with system_scope():
            async with customer.db.transaction() as session:
                pending = await session.scalar(
                    select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == PENDING)
                )
        assert pending == 0
    finally:
        await analytics.stop()
        await customer.stop()
        nats.stop()
