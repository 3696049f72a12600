"""The marketing service over a real gRPC channel: campaigns (CRUD, validation with field violations, date
order, versions, pagination, filters, tenant isolation) and their outbox events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from crm.marketing.v1 import marketing_pb2 as pb
from crm.marketing.v1 import marketing_pb2_grpc
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.grpc import mask, outbox, violations
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer
from crm_marketing.app import SPEC

Stub = marketing_pb2_grpc.MarketingServiceStub


@pytest.fixture(scope="module")
async def marketing(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[ServiceRuntime]:
    rt = await start_service(
        SPEC, database_factory.create("marketing"), nats_url=nats_url, verifier=token_issuer.verifier()
    )
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def stub(marketing: ServiceRuntime) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{marketing.port}") as channel:
        yield marketing_pb2_grpc.MarketingServiceStub(channel)


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def create(stub: Stub, md: Any, **fields: Any) -> pb.Campaign:
    fields.setdefault("name", "Campaign")
    fields.setdefault("channel", "email")
    return await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(**fields)), metadata=md)


async def test_crud_round_trip_with_chinese_text(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    c = await create(
        stub,
        md,
        name=" 双十一 大促 ",
        channel="Social",
        budget="50000",
        start_date="2025-11-01",
        end_date="2025-11-11",
    )
    assert (c.name, c.channel, c.budget, c.currency, c.status, c.start_date, c.end_date, c.version) == (
        "双十一 大促",
        "social",
        "50000.00",
        "CNY",
        "draft",
        "2025-11-01",
        "2025-11-11",
        1,
    )
    assert await stub.GetCampaign(pb.GetCampaignRequest(id=c.id), metadata=md) == c
    updated = await stub.UpdateCampaign(
        pb.UpdateCampaignRequest(
            campaign=pb.Campaign(id=c.id, status="active", budget="1", currency="usd", version=1),
            update_mask=mask("status", "currency"),
        ),
        metadata=md,
    )
    assert (updated.status, updated.currency, updated.budget, updated.version) == ("active", "USD", "50000.00", 2)
    await stub.DeleteCampaign(pb.DeleteCampaignRequest(id=c.id, version=2), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetCampaign(pb.GetCampaignRequest(id=c.id), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_every_invalid_field_is_named(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(
            stub,
            md,
            name="",
            channel="tv",
            budget="-5",
            currency="EURO",
            status="running",
            start_date="2025-1-1x",
            end_date="tomorrow",
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {
        "name",
        "channel",
        "budget",
        "currency",
        "status",
        "start_date",
        "end_date",
    }
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, md, channel="")
    assert violations(err.value) == {"channel": "is required"}


async def test_end_date_may_not_precede_start_date(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, md, start_date="2025-05-02", end_date="2025-05-01")
    assert set(violations(err.value)) == {"end_date"}

    c = await create(stub, md, start_date="2025-05-01", end_date="2025-05-31")
    moves: list[tuple[dict[str, Any], str]] = [
        ({"end_date": "2025-04-30"}, "end_date"),
        ({"start_date": "2025-06-01"}, "start_date"),
    ]
    for fields, path in moves:
        with pytest.raises(grpc.aio.AioRpcError) as err:  # one date alone, checked against the stored other
            await stub.UpdateCampaign(
                pb.UpdateCampaignRequest(campaign=pb.Campaign(id=c.id, **fields), update_mask=mask(path)),
                metadata=md,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(violations(err.value)) == {"end_date"}
    current = await stub.GetCampaign(pb.GetCampaignRequest(id=c.id), metadata=md)
    assert (current.start_date, current.end_date, current.version) == ("2025-05-01", "2025-05-31", 1)
    same_day = await stub.UpdateCampaign(
        pb.UpdateCampaignRequest(campaign=pb.Campaign(id=c.id, end_date="2025-05-01"), update_mask=mask("end_date")),
        metadata=md,
    )
    assert same_day.end_date == "2025-05-01"


async def test_stale_versions_are_aborted(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    c = await create(stub, md)
    await stub.UpdateCampaign(
        pb.UpdateCampaignRequest(campaign=pb.Campaign(id=c.id, name="v2", version=1), update_mask=mask("name")),
        metadata=md,
    )
    for call in (
        stub.UpdateCampaign(
            pb.UpdateCampaignRequest(campaign=pb.Campaign(id=c.id, name="late", version=1), update_mask=mask("name")),
            metadata=md,
        ),
        stub.DeleteCampaign(pb.DeleteCampaignRequest(id=c.id, version=1), metadata=md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert "version" in violations(err.value)


async def test_page_size_bounds_and_pagination(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    created = [(await create(stub, md, name=f"活动 {i}")).id for i in range(120)]
    assert len((await stub.ListCampaigns(pb.ListCampaignsRequest(page_size=0), metadata=md)).campaigns) == 50
    for bad in (-1, 501):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListCampaigns(pb.ListCampaignsRequest(page_size=bad), metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(violations(err.value)) == {"page_size"}
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListCampaigns(pb.ListCampaignsRequest(page_size=50, page_token=token), metadata=md)
        seen.extend(c.id for c in page.campaigns)
        token = page.next_page_token
        if not token:
            break
    assert seen == created


async def test_list_filters(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    md = token_issuer.metadata(tenant)
    a = await create(stub, md, channel="email", status="active")
    b = await create(stub, md, channel="sms", status="active")
    c = await create(stub, md, channel="sms")

    async def ids(**filters: Any) -> list[str]:
        return [x.id for x in (await stub.ListCampaigns(pb.ListCampaignsRequest(**filters), metadata=md)).campaigns]

    assert await ids(status="active") == [a.id, b.id]
    assert await ids(channel="sms") == [b.id, c.id]
    assert await ids(channel="SMS", status="draft") == [c.id]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ids(channel="fax", status="done")
    assert set(violations(err.value)) == {"channel", "status"}


async def test_tenants_never_see_each_other(stub: Stub, token_issuer: TokenIssuer, tenant: str) -> None:
    a, b = token_issuer.metadata(tenant), token_issuer.metadata(tenant + "b")
    c = await create(stub, a, name="Secret")
    for call in (
        stub.GetCampaign(pb.GetCampaignRequest(id=c.id), metadata=b),
        stub.UpdateCampaign(
            pb.UpdateCampaignRequest(campaign=pb.Campaign(id=c.id, name="X"), update_mask=mask("name")), metadata=b
        ),
        stub.DeleteCampaign(pb.DeleteCampaignRequest(id=c.id), metadata=b),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert list((await stub.ListCampaigns(pb.ListCampaignsRequest(), metadata=b)).campaigns) == []
    assert (await stub.GetCampaign(pb.GetCampaignRequest(id=c.id), metadata=a)).name == "Secret"


async def test_each_change_writes_its_event(
    stub: Stub, marketing: ServiceRuntime, token_issuer: TokenIssuer, tenant: str
) -> None:
    md = token_issuer.metadata(tenant)
    c = await create(stub, md, name="Eventful")
    await stub.UpdateCampaign(
        pb.UpdateCampaignRequest(campaign=pb.Campaign(id=c.id, status="scheduled"), update_mask=mask("status")),
        metadata=md,
    )
    await stub.DeleteCampaign(pb.DeleteCampaignRequest(id=c.id), metadata=md)
    events = await outbox(marketing.db, tenant)
    assert [e.type for e in events] == [
        "crm.marketing.campaign.created",
        "crm.marketing.campaign.updated",
        "crm.marketing.campaign.deleted",
    ]
    assert {e.subject for e in events} == {c.id}
    assert events[1].data["changed"] == ["status"]
    assert events[1].data["campaign"]["status"] == "scheduled"
