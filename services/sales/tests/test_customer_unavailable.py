"""When the customer service cannot be reached, sales accepts an unknown contact id (eventual consistency)
and fills in the contact's name once the customer service's contact.created event arrives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from crm.sales.v1 import sales_pb2 as pb
from crm.sales.v1 import sales_pb2_grpc
from crm_kit.db.ids import uuid7
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.nats import free_port
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer
from crm_sales.app import SPEC


@pytest.fixture(scope="module")
async def offline_stub(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[sales_pb2_grpc.SalesServiceStub]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SALES_CUSTOMER_ADDR", f"127.0.0.1:{free_port()}")  # nothing listens there
        rt: ServiceRuntime = await start_service(
            SPEC, database_factory.create("sales-offline"), nats_url=nats_url, verifier=token_issuer.verifier()
        )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") as channel:
        yield sales_pb2_grpc.SalesServiceStub(channel)
    await rt.stop()


async def test_unknown_contact_is_accepted_and_named_later(
    offline_stub: sales_pb2_grpc.SalesServiceStub, feed: Any, token_issuer: TokenIssuer, tenant: str
) -> None:
    md = token_issuer.metadata(tenant)
    contact_id = uuid7()
    o = await offline_stub.CreateOpportunity(
        pb.CreateOpportunityRequest(opportunity=pb.Opportunity(name="Offline deal", contact_id=contact_id)),
        metadata=md,
    )
    assert (o.contact_id, o.contact_name) == (contact_id, "")

    await feed.contact(tenant, "created", contact_id, "Hua", "陈", version=1)

    async def named() -> bool:
        current = await offline_stub.GetOpportunity(pb.GetOpportunityRequest(id=o.id), metadata=md)
        return current.contact_name == "Hua 陈"

    await feed.eventually(named)
