"""Analytics test fixtures: a nats-server of the module's own, the analytics service on it, a publisher of
real CloudEvents, and a GetSummary client.

Each module gets its own nats-server (not the session one) because the `analytics` durable consumer lives
in the server: a runtime elsewhere in the session sharing it would split the deliveries between two
databases, and a rebuild replays the whole stream.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from crm.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from crm_analytics.app import SPEC
from crm_kit.db.base import utcnow
from crm_kit.db.ids import uuid7
from crm_kit.events.bus import EventBus
from crm_kit.events.envelope import CONTENT_TYPE, Event
from crm_kit.events.relay import MSG_ID_HEADER
from crm_kit.events.stream import DEFAULT_STREAM
from crm_kit.protos import to_dict
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory, DatabaseUrls
from crm_kit.testing.nats import NatsServer
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer


@pytest.fixture(scope="module")
def events_nats() -> Iterator[str]:
    with NatsServer() as server:
        yield server.url


@dataclass
class Analytics:
    runtime: ServiceRuntime
    urls: DatabaseUrls


@pytest.fixture(scope="module")
async def analytics(
    database_factory: DatabaseFactory, events_nats: str, token_issuer: TokenIssuer
) -> AsyncIterator[Analytics]:
    urls = database_factory.create("analytics")
    rt = await start_service(SPEC, urls, nats_url=events_nats, verifier=token_issuer.verifier())
    yield Analytics(rt, urls)
    await rt.stop()


def new_tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


class Publisher:
    """Publishes CloudEvents the way the outbox relay does: JetStream, `Nats-Msg-Id` = event id."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.clock = utcnow()

    def tick(self) -> datetime:
        self.clock += timedelta(milliseconds=1)
        return self.clock

    def event(
        self,
        tenant: str,
        event_type: str,
        resource: Message | dict[str, Any] | None = None,
        *,
        time: datetime | None = None,
        **extra: Any,
    ) -> Event:
        """An event as `ResourceStore.emit` writes it: data = {<entity>: <resource as proto JSON>, ...}."""
        entity = event_type.split(".")[2]
        data: dict[str, Any] = dict(extra)
        subject = ""
        if resource is not None:
            body = to_dict(resource) if isinstance(resource, Message) else resource
            data[entity] = body
            subject = str(body.get("id", ""))
        return Event(
            id=uuid7(),
            source=f"crm.{event_type.split('.')[1]}",
            type=event_type,
            subject=subject,
            time=time or self.tick(),
            tenant_id=tenant,
            data=data,
        )

    async def publish(self, *events: Event, msg_id: str | None = None) -> None:
        for event in events:
            headers = {MSG_ID_HEADER: msg_id or event.id, "Content-Type": CONTENT_TYPE}
            await self.bus.js.publish(event.nats_subject, event.to_json(), headers=headers, stream=DEFAULT_STREAM)


@pytest.fixture(scope="module")
async def publisher(analytics: Analytics, events_nats: str) -> AsyncIterator[Publisher]:
    bus = await EventBus.connect(events_nats, name="analytics-test-publisher", timeout=10)
    yield Publisher(bus)
    await bus.close()


class Summaries:
    def __init__(self, stub: analytics_pb2_grpc.AnalyticsServiceStub, tokens: TokenIssuer) -> None:
        self.stub = stub
        self.tokens = tokens

    async def get(self, tenant: str) -> analytics_pb2.Summary:
        return await self.stub.GetSummary(analytics_pb2.GetSummaryRequest(), metadata=self.tokens.metadata(tenant))

    async def wait(
        self, tenant: str, ready: Callable[[analytics_pb2.Summary], bool], timeout: float = 20.0
    ) -> analytics_pb2.Summary:
        """The tenant's summary once `ready` holds for it (events are folded asynchronously)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            summary = await self.get(tenant)
            if ready(summary):
                return summary
            if loop.time() > deadline:
                raise AssertionError(f"summary of {tenant} never became ready:\n{summary}")
            await asyncio.sleep(0.05)

    async def after(self, tenant: str, events_processed: int) -> analytics_pb2.Summary:
        return await self.wait(tenant, lambda s: s.events_processed >= events_processed)


@pytest.fixture(scope="module")
async def summaries(analytics: Analytics, token_issuer: TokenIssuer) -> AsyncIterator[Summaries]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{analytics.runtime.port}") as channel:
        yield Summaries(analytics_pb2_grpc.AnalyticsServiceStub(channel), token_issuer)
