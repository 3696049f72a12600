"""REST -> gRPC through the generated routes, against a real gRPC server with in-memory storage."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from crm_gateway.config import Settings
from crm_gateway.runtime import Gateway

BASE = "/api/v1/contacts"


@pytest.fixture
def settings(make_settings: Callable[..., Settings], services: Any) -> Settings:
    return make_settings(**services.endpoints())


@pytest.fixture(autouse=True)
def _wire(wired: Any) -> None:
    """Every test here talks to the stand-in services."""


@pytest.fixture
def api(client: FlaskClient, admin_token: str) -> Callable[..., Any]:
    def call(method: str, url: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {admin_token}", **kwargs.pop("headers", {})}
        return client.open(url, method=method, headers=headers, **kwargs)

    return call


def test_create_returns_201_location_and_all_defaults(api: Callable[..., Any]) -> None:
    response = api("POST", BASE, json={"first_name": "小明", "last_name": "王", "email": "ming@example.cn"})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert response.headers["Location"] == f"{BASE}/{body['id']}"
    assert response.headers["ETag"] == '"1"'
    assert body["first_name"] == "小明" and body["last_name"] == "王"
    # default values are always present
    assert body["phone"] == "" and body["tags"] == [] and body["account_id"] == ""
    assert body["version"] == 1 and body["create_time"].endswith("Z")
    assert "小明".encode() in response.data, "UTF-8, not \\u escapes"
    assert response.content_type.startswith("application/json")


def test_server_owned_fields_are_ignored_not_rejected(api: Callable[..., Any], wired: Any, tenant: Any) -> None:
    forged = {
        "first_name": "Eve",
        "id": "chosen-id",
        "tenant_id": "another-tenant",
        "create_time": "2001-01-01T00:00:00Z",
        "update_time": "garbage-is-ignored-too",
        "version": 99,
    }
    response = api("POST", BASE, json=forged)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["id"] != "chosen-id" and body["version"] == 1
    assert not body["create_time"].startswith("2001")
    assert list(wired.fake.contacts) == [tenant.id]


def test_get_patch_delete_roundtrip(api: Callable[..., Any], wired: Any) -> None:
    created = api("POST", BASE, json={"first_name": "Ada", "tags": ["vip"]}).get_json()
    url = f"{BASE}/{created['id']}"
    got = api("GET", url)
    assert got.status_code == 200 and got.get_json() == created
    assert got.headers["ETag"] == '"1"'

    patched = api("PATCH", url, json={"last_name": "Lovelace", "tags": ["vip", "重要"], "version": 1, "id": "x"})
    assert patched.status_code == 200, patched.get_json()
    body = patched.get_json()
    assert body["last_name"] == "Lovelace" and body["first_name"] == "Ada" and body["tags"] == ["vip", "重要"]
    assert body["version"] == 2
    method, _ = wired.fake.calls[-1]
    assert method == "UpdateContact"

    assert api("DELETE", f"{url}?version=2").status_code == 204
    assert api("GET", url).status_code == 404


def test_update_mask_is_the_body_keys(api: Callable[..., Any], wired: Any) -> None:
    from crm.customer.v1 import customer_pb2

    created = api("POST", BASE, json={"first_name": "Ada", "email": "ada@example.com"}).get_json()
    api("PATCH", f"{BASE}/{created['id']}", json={"email": "", "tenant_id": "zzz"})
    stored: customer_pb2.Contact = next(iter(wired.fake.contacts.values()))[created["id"]]
    assert stored.email == "" and stored.first_name == "Ada"


def test_patch_with_nothing_to_change_is_400(api: Callable[..., Any]) -> None:
    created = api("POST", BASE, json={"first_name": "Ada"}).get_json()
    response = api("PATCH", f"{BASE}/{created['id']}", json={"version": 1, "id": "x"})
    assert response.status_code == 400
    assert response.get_json()["errors"][0]["field"] == "body"


def test_stale_version_is_409_naming_version(api: Callable[..., Any]) -> None:
    created = api("POST", BASE, json={"first_name": "Ada"}).get_json()
    url = f"{BASE}/{created['id']}"
    assert api("PATCH", url, json={"first_name": "B", "version": 1}).status_code == 200
    stale = api("PATCH", url, json={"first_name": "C", "version": 1})
    assert stale.status_code == 409
    assert stale.content_type == "application/problem+json"
    assert [e["field"] for e in stale.get_json()["errors"]] == ["version"]
    # If-Match carries the version too
    assert api("PATCH", url, json={"first_name": "C"}, headers={"If-Match": '"1"'}).status_code == 409
    assert api("PATCH", url, json={"first_name": "C"}, headers={"If-Match": '"2"'}).status_code == 200
    assert api("DELETE", url, headers={"If-Match": '"2"'}).status_code == 409
    assert api("DELETE", url, headers={"If-Match": '"3"'}).status_code == 204


def test_version_and_if_match_must_agree_and_be_integers(api: Callable[..., Any]) -> None:
    created = api("POST", BASE, json={"first_name": "Ada"}).get_json()
    url = f"{BASE}/{created['id']}"
    for kwargs in (
        {"json": {"first_name": "x", "version": "one"}},
        {"json": {"first_name": "x", "version": 1.5}},
        {"json": {"first_name": "x", "version": True}},
        {"json": {"first_name": "x", "version": 1}, "headers": {"If-Match": '"2"'}},
        {"json": {"first_name": "x"}, "headers": {"If-Match": "banana"}},
    ):
        response = api("PATCH", url, **kwargs)
        assert response.status_code == 400, kwargs
    assert api("DELETE", f"{url}?version=abc").status_code == 400
    assert api("DELETE", f"{url}?force=1").status_code == 400


def test_service_validation_errors_become_400_with_fields(api: Callable[..., Any]) -> None:
    response = api("POST", BASE, json={"email": "not-an-email"})
    assert response.status_code == 400
    problem = response.get_json()
    assert response.content_type == "application/problem+json"
    assert problem["errors"] == [{"field": "email", "message": "not an email address"}]


def test_unknown_fields_and_wrong_types_are_400_naming_each_field(api: Callable[..., Any], wired: Any) -> None:
    response = api("POST", BASE, json={"first_name": 7, "nickname": "x", "tags": "vip", "version": "x"})
    assert response.status_code == 400
    fields = {e["field"]: e["message"] for e in response.get_json()["errors"]}
    assert fields.keys() == {"first_name", "nickname", "tags"}
    assert fields["nickname"] == "unknown field"
    assert fields["first_name"] == "must be a string"
    assert "array" in fields["tags"]
    assert wired.fake.calls == [], "nothing reaches the service"


def test_errors_inside_nested_objects_name_the_nested_field(api: Callable[..., Any], wired: Any) -> None:
    body = {
        "emails": [{"address": "a@example.com", "kind": "work"}, "b@example.com", {"primary": "yes"}],
        "addresses": [{"city": 5}],
    }
    response = api("POST", BASE, json=body)
    assert response.status_code == 400
    fields = {e["field"]: e["message"] for e in response.get_json()["errors"]}
    assert fields == {
        "emails[0].kind": "unknown field",
        "emails[1]": "must be an object, not a string",
        "emails[2].primary": "must be a boolean",
        "addresses[0].city": "must be a string",
    }
    assert wired.fake.calls == []


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ("{not json", "application/json", 400),
        ('["a", "list"]', "application/json", 400),
        ('"a string"', "application/json", 400),
        ("", "application/json", 400),
        ('{"first_name": NaN}', "application/json", 400),
        ('{"first_name": "a", "first_name": "b"}', "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        ('{"first_name": "a"}', "text/plain", 415),
    ],
)
def test_bad_bodies_are_problems(api: Callable[..., Any], data: Any, content_type: str, status: int) -> None:
    response = api("POST", BASE, data=data, content_type=content_type)
    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    problem = response.get_json()
    assert {"type", "title", "status", "detail", "instance"} <= set(problem)


def test_oversized_body_is_413(api: Callable[..., Any]) -> None:
    body = '{"first_name": "' + "x" * (1024 * 1024) + '"}'
    response = api("POST", BASE, data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.content_type == "application/problem+json"


def test_list_pages_and_filters(api: Callable[..., Any], wired: Any) -> None:
    for i in range(5):
        api("POST", BASE, json={"first_name": f"n{i}", "tags": ["vip"] if i % 2 else []})
    first = api("GET", f"{BASE}?page_size=2")
    assert first.status_code == 200
    body = first.get_json()
    assert len(body["items"]) == 2 and body["next_page_token"]
    second = api("GET", f"{BASE}?page_size=2&page_token={body['next_page_token']}").get_json()
    assert {c["id"] for c in second["items"]}.isdisjoint({c["id"] for c in body["items"]})
    last = api("GET", f"{BASE}?page_size=2&page_token=4").get_json()
    assert len(last["items"]) == 1 and last["next_page_token"] == ""
    vip = api("GET", f"{BASE}?tag=vip").get_json()
    assert len(vip["items"]) == 2 and set(vip) == {"items", "next_page_token"}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page_size=abc", "page_size"),
        ("page_size=1.5", "page_size"),
        ("page_size=99999999999", "page_size"),
        ("colour=red", "colour"),
        ("tag=vip&tag=lead", "tag"),  # one value only: never silently the last of several
        ("page_size=2&page_size=3", "page_size"),
    ],
)
def test_bad_query_parameters_are_400_naming_them(api: Callable[..., Any], query: str, field: str) -> None:
    response = api("GET", f"{BASE}?{query}")
    assert response.status_code == 400
    assert [e["field"] for e in response.get_json()["errors"]] == [field]


def test_get_and_patch_refuse_query_parameters(api: Callable[..., Any], wired: Any) -> None:
    created = api("POST", BASE, json={"first_name": "Ada"}).get_json()
    assert api("GET", f"{BASE}/{created['id']}?fields=name").status_code == 400
    patched = api("PATCH", f"{BASE}/{created['id']}?update_mask=last_name", json={"first_name": "Bea"})
    assert patched.status_code == 400 and patched.get_json()["errors"][0]["field"] == "update_mask"
    assert api("GET", f"{BASE}/{created['id']}").get_json()["first_name"] == "Ada"  # nothing changed


def test_a_repeated_single_parameter_points_to_its_list(api: Callable[..., Any]) -> None:
    response = api("GET", f"{BASE}?tag=vip&tag=lead")
    assert "repeat tags= for several" in response.get_json()["errors"][0]["message"]
    assert api("GET", f"{BASE}?tags=vip&tags=lead").status_code == 200


def test_page_size_out_of_range_is_the_services_400(api: Callable[..., Any]) -> None:
    response = api("GET", f"{BASE}?page_size=501")
    assert response.status_code == 400
    assert response.get_json()["errors"][0]["field"] == "page_size"


def test_other_tenants_ids_are_404(
    client: FlaskClient, api: Callable[..., Any], make_tenant: Callable[..., Any], login: Callable[..., Any]
) -> None:
    created = api("POST", BASE, json={"first_name": "Ada"}).get_json()
    other = make_tenant("globex")
    token = login("globex", other.admin_email)["access_token"]
    response = client.get(f"{BASE}/{created['id']}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"


def test_token_and_traceparent_are_forwarded(api: Callable[..., Any], wired: Any, admin_token: str) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = api("GET", BASE, headers={"traceparent": traceparent, "X-Request-ID": "req-12345678"})
    assert response.status_code == 200
    _, metadata = wired.fake.calls[-1]
    assert metadata["authorization"] == f"Bearer {admin_token}"
    assert metadata["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert metadata["x-request-id"] == "req-12345678"
    assert response.headers["X-Request-ID"] == "req-12345678"


def test_channels_are_reused(api: Callable[..., Any], gw: Gateway) -> None:
    for _ in range(5):
        assert api("GET", BASE).status_code == 200
    api("GET", "/api/v1/pipeline")
    assert gw.pool.open_channels() == 2  # (default, customer) and (default, sales)


def test_singletons(api: Callable[..., Any]) -> None:
    pipeline = api("GET", "/api/v1/pipeline")
    assert pipeline.status_code == 200
    body = pipeline.get_json()
    assert body["name"] == "销售管道 default"
    assert body["stages"][0] == {"key": "lead", "name": "线索", "probability": 10, "is_won": False, "is_lost": False}
    summary = api("GET", "/api/v1/analytics/summary").get_json()
    assert summary["contact_count"] == 2 and summary["account_count"] == 0
    assert summary["pipeline_by_stage"] == [] and summary["campaigns_by_status"] == [{"key": "draft", "count": 1}]
    assert api("GET", "/api/v1/pipeline?x=1").status_code == 400


def test_member_token_is_forwarded_and_service_decides(client: FlaskClient, member_token: str, wired: Any) -> None:
    response = client.post(BASE, json={"first_name": "M"}, headers={"Authorization": f"Bearer {member_token}"})
    assert response.status_code == 201


def test_api_client_scopes(client: FlaskClient, gw: Gateway, tenant: Any) -> None:
    from crm_gateway.auth import api_clients

    new = api_clients.create(
        gw.db,
        gw.pepper,
        tenant_id=tenant.id,
        name="reader",
        roles=["member"],
        scopes=["contacts:read"],
        expires_at=None,
    )
    token = client.post(
        "/api/v1/auth/token",
        json={"grant_type": "client_credentials", "client_id": new.client.client_id, "client_secret": new.secret},
    ).get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get(BASE, headers=headers).status_code == 200
    denied = client.post(BASE, json={"first_name": "x"}, headers=headers)
    assert denied.status_code == 403 and "contacts:write" in denied.get_json()["detail"]
    assert client.get("/api/v1/pipeline", headers=headers).status_code == 403
    assert client.get("/api/v1/users", headers=headers).status_code == 403


class TestUnavailable:
    @pytest.fixture
    def settings(
        self, make_settings: Callable[..., Settings], services: Any, unused_port: Callable[[], int]
    ) -> Settings:
        dead = f"127.0.0.1:{unused_port()}"
        return make_settings(**{**services.endpoints(), "customer_addr": dead}, grpc_deadline_seconds=2.0)

    def test_unreachable_service_is_503_with_retry_after(self, api: Callable[..., Any]) -> None:
        response = api("GET", BASE)
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert response.content_type == "application/problem+json"
        assert "127.0.0.1" not in response.get_json()["detail"], "no internal addresses in errors"
        # other services of the cell still work
        assert api("GET", "/api/v1/pipeline").status_code == 200


class TestDeadline:
    @pytest.fixture
    def settings(self, make_settings: Callable[..., Settings], services: Any) -> Settings:
        return make_settings(**services.endpoints(), grpc_deadline_seconds=0.3)

    def test_slow_service_is_503(self, api: Callable[..., Any], wired: Any) -> None:
        wired.fake.delay = 1.0
        response = api("GET", BASE)
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert "in time" in response.get_json()["detail"]


class TestCells:
    @pytest.fixture
    def big(self, start_fake: Callable[..., Any]) -> Any:
        return start_fake("big")

    @pytest.fixture
    def settings(self, make_settings: Callable[..., Settings], services: Any, big: Any) -> Settings:
        cell = {svc: big.addr for svc in ("customer", "sales", "marketing", "servicedesk", "analytics")}
        return make_settings(**services.endpoints(), cells={"big": cell})

    @pytest.fixture
    def big_tenant(self, make_tenant: Callable[..., Any], big: Any, app: Flask) -> Iterator[Any]:
        big.fake.jwks = app.extensions["crm_gateway"].keys.jwks
        yield make_tenant("bigcorp", cell="big")

    def test_tenants_are_routed_to_their_cell(
        self, client: FlaskClient, api: Callable[..., Any], big_tenant: Any, login: Callable[..., Any]
    ) -> None:
        token = login("bigcorp", big_tenant.admin_email)["access_token"]
        big = client.get("/api/v1/pipeline", headers={"Authorization": f"Bearer {token}"}).get_json()
        assert big["name"] == "销售管道 big"
        assert api("GET", "/api/v1/pipeline").get_json()["name"] == "销售管道 default"


def test_responses_validate_against_the_openapi_schemas(api: Callable[..., Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")  # dev dependency (today through kubernetes-validate)
    Draft202012Validator = jsonschema.Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    doc = api("GET", "/api/v1/openapi.json").get_json()
    registry = Registry().with_resource("urn:doc", Resource.from_contents(doc, default_specification=DRAFT202012))

    def check(body: Any, name: str) -> None:
        schema = {"$ref": f"urn:doc#/components/schemas/{name}"}
        Draft202012Validator(schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(
            body
        )

    created = api("POST", BASE, json={"first_name": "Ada", "tags": ["x"]}).get_json()
    check(created, "crm.customer.v1.Contact")
    check({"first_name": "Ada", "version": 3}, "crm.customer.v1.Contact.Input")
    check(api("GET", BASE).get_json(), "crm.customer.v1.Contact.Page")
    check(api("GET", "/api/v1/pipeline").get_json(), "crm.sales.v1.Pipeline")
    check(api("GET", "/api/v1/analytics/summary").get_json(), "crm.analytics.v1.Summary")
    check(api("GET", f"{BASE}/nope").get_json(), "Problem")
