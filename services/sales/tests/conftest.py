"""Sales test fixtures: the real customer service, and the sales service pointed at it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from crm.customer.v1 import customer_pb2_grpc
from crm.sales.v1 import sales_pb2_grpc
from crm_customer.app import SPEC as CUSTOMER
from crm_kit.db.base import utcnow
from crm_kit.db.ids import uuid7
from crm_kit.events.bus import EventBus
from crm_kit.events.envelope import Event
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer
from crm_sales.app import SPEC as SALES


@pytest.fixture(scope="module")
async def customer(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[ServiceRuntime]:
    rt = await start_service(
        CUSTOMER, database_factory.create("customer"), nats_url=nats_url, verifier=token_issuer.verifier()
    )
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def sales(
    customer: ServiceRuntime, database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[ServiceRuntime]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SALES_CUSTOMER_ADDR", f"127.0.0.1:{customer.port}")
        rt = await start_service(
            SALES, database_factory.create("sales"), nats_url=nats_url, verifier=token_issuer.verifier()
        )
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def stub(sales: ServiceRuntime) -> AsyncIterator[sales_pb2_grpc.SalesServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sales.port}") as channel:
        yield sales_pb2_grpc.SalesServiceStub(channel)


@pytest.fixture(scope="module")
async def customer_stub(customer: ServiceRuntime) -> AsyncIterator[customer_pb2_grpc.CustomerServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{customer.port}") as channel:
        yield customer_pb2_grpc.CustomerServiceStub(channel)


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


class EventFeed:
    """Publishes customer contact events the way the customer service's relay does, and waits for their
    effects (events travel asynchronously)."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    async def contact(self, tenant_id: str, action: str, contact_id: str, first: str, last: str, version: int) -> Event:
        event = Event(
            id=uuid7(),
            source="crm.customer",
            type=f"crm.customer.contact.{action}",
            subject=contact_id,
            time=utcnow(),
            tenant_id=tenant_id,
            data={"contact": {"id": contact_id, "first_name": first, "last_name": last, "version": version}},
        )
        await self.bus.js.publish(event.nats_subject, event.to_json(), headers={"Nats-Msg-Id": event.id})
        return event

    @staticmethod
    async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
        """Poll `check` until it returns something truthy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = await check()
            if result:
                return result
            if loop.time() > deadline:
                raise AssertionError(f"condition not met within {timeout}s (last result {result!r})")
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def feed(nats_url: str) -> AsyncIterator[EventFeed]:
    bus = await EventBus.connect([nats_url], name="sales-tests")
    yield EventFeed(bus)
    await bus.close()
