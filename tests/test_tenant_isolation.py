"""Tenant isolation through every access path: the gateway, direct gRPC with another tenant's token,
lists, forged tenant ids, and the analytics read model."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from crm.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from crm.customer.v1 import customer_pb2, customer_pb2_grpc
from crm.marketing.v1 import marketing_pb2, marketing_pb2_grpc
from crm.sales.v1 import sales_pb2, sales_pb2_grpc
from crm.servicedesk.v1 import servicedesk_pb2, servicedesk_pb2_grpc
from tests.platform_harness import Platform, Tenant, eventually


@pytest.fixture(scope="module")
def a_records(platform: Platform, tenant_a: Tenant) -> dict[str, dict[str, Any]]:
    with platform.http(tenant_a) as api:
        contact = api.post("/api/v1/contacts", json={"first_name": "Ada", "last_name": "Lovelace"}).json()
        account = api.post("/api/v1/accounts", json={"name": "Analytical Engines"}).json()
        opp = api.post(
            "/api/v1/opportunities",
            json={"contact_id": contact["id"], "name": "Engine", "amount": "10", "currency": "GBP"},
        ).json()
        ticket = api.post("/api/v1/tickets", json={"contact_id": contact["id"], "subject": "Broken gear"}).json()
        campaign = api.post("/api/v1/campaigns", json={"name": "Launch", "channel": "web"}).json()
    return {"contacts": contact, "accounts": account, "opportunities": opp, "tickets": ticket, "campaigns": campaign}


RESOURCES = ["contacts", "accounts", "opportunities", "tickets", "campaigns"]
NAME_FIELD = {
    "contacts": "first_name",
    "accounts": "name",
    "opportunities": "name",
    "tickets": "subject",
    "campaigns": "name",
}


@pytest.mark.parametrize("resource", RESOURCES)
def test_other_tenants_ids_are_not_found_through_the_gateway(
    platform: Platform, a_records: dict[str, dict[str, Any]], tenant_b: Tenant, resource: str
) -> None:
    rid = a_records[resource]["id"]
    with platform.http(tenant_b) as api:
        assert api.get(f"/api/v1/{resource}/{rid}").status_code == 404
        patch = api.patch(f"/api/v1/{resource}/{rid}", json={NAME_FIELD[resource]: "hijacked"})
        assert patch.status_code == 404, patch.text
        assert api.delete(f"/api/v1/{resource}/{rid}").status_code == 404
        listed = api.get(f"/api/v1/{resource}", params={"page_size": 500}).json()["items"]
        assert rid not in {item["id"] for item in listed}
    with platform.http() as anon:
        assert anon.get(f"/api/v1/{resource}/{rid}").status_code == 401


def _grpc_get(platform: Platform, resource: str, rid: str, tenant: Tenant) -> Any:
    calls = {
        "contacts": (customer_pb2_grpc.CustomerServiceStub, "customer", "GetContact", customer_pb2.GetContactRequest),
        "accounts": (customer_pb2_grpc.CustomerServiceStub, "customer", "GetAccount", customer_pb2.GetAccountRequest),
        "opportunities": (sales_pb2_grpc.SalesServiceStub, "sales", "GetOpportunity", sales_pb2.GetOpportunityRequest),
        "tickets": (
            servicedesk_pb2_grpc.ServicedeskServiceStub,
            "servicedesk",
            "GetTicket",
            servicedesk_pb2.GetTicketRequest,
        ),
        "campaigns": (
            marketing_pb2_grpc.MarketingServiceStub,
            "marketing",
            "GetCampaign",
            marketing_pb2.GetCampaignRequest,
        ),
    }
    stub_cls, service, method, request_cls = calls[resource]
    stub = stub_cls(platform.channel(service))
    return getattr(stub, method)(request_cls(id=rid), metadata=tenant.metadata, timeout=10)


@pytest.mark.parametrize("resource", RESOURCES)
def test_other_tenants_ids_are_not_found_over_grpc(
    platform: Platform, a_records: dict[str, dict[str, Any]], tenant_a: Tenant, tenant_b: Tenant, resource: str
) -> None:
    rid = a_records[resource]["id"]
    assert _grpc_get(platform, resource, rid, tenant_a).id == rid
    with pytest.raises(grpc.RpcError) as err:
        _grpc_get(platform, resource, rid, tenant_b)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_without_a_token_is_unauthenticated(platform: Platform, a_records: dict[str, dict[str, Any]]) -> None:
    stub = customer_pb2_grpc.CustomerServiceStub(platform.channel("customer"))
    with pytest.raises(grpc.RpcError) as err:
        stub.GetContact(customer_pb2.GetContactRequest(id=a_records["contacts"]["id"]), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_forged_tenant_id_in_a_body_is_ignored(platform: Platform, tenant_a: Tenant, tenant_b: Tenant) -> None:
    with platform.http(tenant_b) as api:
        created = api.post(
            "/api/v1/contacts", json={"first_name": "Mallory", "last_name": "Forger", "tenant_id": tenant_a.tenant_id}
        )
        assert created.status_code == 201, created.text
        rid = created.json()["id"]
        assert "tenant_id" not in created.json() or created.json()["tenant_id"] != tenant_a.tenant_id
        assert api.get(f"/api/v1/contacts/{rid}").status_code == 200
    with platform.http(tenant_a) as api:
        assert api.get(f"/api/v1/contacts/{rid}").status_code == 404
        names = {c["last_name"] for c in api.get("/api/v1/contacts", params={"page_size": 500}).json()["items"]}
        assert "Forger" not in names


def test_tenant_header_that_disagrees_with_the_token_is_refused(
    platform: Platform, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    with platform.http(tenant_b) as api:
        r = api.get("/api/v1/contacts", headers={"X-Tenant-ID": tenant_a.tenant_id})
        assert r.status_code in (401, 403)
        assert r.headers["content-type"].startswith("application/problem+json")


def test_analytics_read_models_never_mix_tenants(
    platform: Platform, a_records: dict[str, dict[str, Any]], tenant_a: Tenant, tenant_b: Tenant
) -> None:
    stub = analytics_pb2_grpc.AnalyticsServiceStub(platform.channel("analytics"))

    def a_counted() -> bool:
        s = stub.GetSummary(analytics_pb2.GetSummaryRequest(), metadata=tenant_a.metadata, timeout=10)
        return s.account_count == 1 and len(s.campaigns_by_status) == 1

    eventually(a_counted)
    b = stub.GetSummary(analytics_pb2.GetSummaryRequest(), metadata=tenant_b.metadata, timeout=10)
    assert b.account_count == 0
    assert b.open_opportunity_count == 0
    assert list(b.campaigns_by_status) == []
