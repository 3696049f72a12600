"""Custom methods (rest/methods.py): REST routes from MethodRoute table entries, against real gRPC.

The routes here exist only in this module's app (create_app(extra_method_routes=...)); they point at real
RPCs of the stand-in services, plus a test-only service (built from descriptors at import) for the file
download and upload conventions.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from flask import Flask
from flask.testing import FlaskClient
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass

from crm_gateway.app import create_app
from crm_gateway.auth import api_clients
from crm_gateway.config import Settings
from crm_gateway.openapi import build
from crm_gateway.rest.methods import METHOD_ROUTES, MethodRoute, bind_method, bound_methods
from crm_gateway.rest.registry import operations
from crm_gateway.runtime import Gateway

from .conftest import PASSWORD, FakeServices, RunningFake, TenantInfo, gateway

API = "/api/v1"
CUSTOMER = "crm.customer.v1.CustomerService"
TEST_SERVICE = "crm.customer.v1.GatewayMethodsTestService"
CSV = "text/csv"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


# --- a test-only service for the file conventions ----------------------------------------------------


def _register_test_proto() -> None:
    pool = descriptor_pool.Default()
    name = "crm/customer/v1/gateway_methods_test.proto"
    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    T = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name=name, package="crm.customer.v1", syntax="proto3")

    def message(msg_name: str, *fields: tuple[str, int, bool]) -> None:
        msg = f.message_type.add(name=msg_name)
        for number, (field_name, kind, repeated) in enumerate(fields, start=1):
            label = T.LABEL_REPEATED if repeated else T.LABEL_OPTIONAL
            msg.field.add(name=field_name, number=number, type=kind, label=label)

    message(
        "ExportThingsRequest",
        ("format", T.TYPE_STRING, False),
        ("ids", T.TYPE_STRING, True),
        ("limit", T.TYPE_INT32, False),
    )
    message(
        "ThingFile",
        ("content_type", T.TYPE_STRING, False),
        ("filename", T.TYPE_STRING, False),
        ("content", T.TYPE_BYTES, False),
    )
    message(
        "ImportThingsRequest",
        ("content", T.TYPE_BYTES, False),
        ("dry_run", T.TYPE_BOOL, False),
        ("format", T.TYPE_STRING, False),
        ("filename", T.TYPE_STRING, False),
        ("content_type", T.TYPE_STRING, False),
    )
    message(
        "ImportThingsResult",
        ("size", T.TYPE_INT32, False),
        ("dry_run", T.TYPE_BOOL, False),
        ("format", T.TYPE_STRING, False),
        ("filename", T.TYPE_STRING, False),
        ("content_type", T.TYPE_STRING, False),
        ("sha256", T.TYPE_STRING, False),
    )
    service = f.service.add(name="GatewayMethodsTestService")
    service.method.add(
        name="ExportThings", input_type=".crm.customer.v1.ExportThingsRequest", output_type=".crm.customer.v1.ThingFile"
    )
    service.method.add(
        name="ImportThings",
        input_type=".crm.customer.v1.ImportThingsRequest",
        output_type=".crm.customer.v1.ImportThingsResult",
    )
    pool.AddSerializedFile(f.SerializeToString())


_register_test_proto()


def _cls(name: str) -> Any:
    return GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(f"crm.customer.v1.{name}"))


EXPORT_FILENAME = "联系人 export.csv"


def _file_handlers(fake: FakeServices) -> Sequence[grpc.GenericRpcHandler]:
    thing_file, result = _cls("ThingFile"), _cls("ImportThingsResult")

    def export(req: Any, context: grpc.ServicerContext) -> Any:
        fake.authenticate("ExportThings", context)
        rows = "".join(f"{i},名字\n" for i in req.ids[: req.limit or None])
        return thing_file(
            content_type=f"{CSV}; charset=utf-8", filename=EXPORT_FILENAME, content=f"id\n{rows}".encode()
        )

    def import_(req: Any, context: grpc.ServicerContext) -> Any:
        fake.authenticate("ImportThings", context)
        return result(
            size=len(req.content),
            dry_run=req.dry_run,
            format=req.format,
            filename=req.filename,
            content_type=req.content_type,
            sha256=hashlib.sha256(req.content).hexdigest(),
        )

    def handler(fn: Callable[..., Any], request_cls: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=request_cls.FromString, response_serializer=lambda m: m.SerializeToString()
        )

    return [
        grpc.method_handlers_generic_handler(
            TEST_SERVICE,
            {
                "ExportThings": handler(export, _cls("ExportThingsRequest")),
                "ImportThings": handler(import_, _cls("ImportThingsRequest")),
            },
        )
    ]


# --- the routes under test (registered only in this module's app) ------------------------------------

ROUTES: tuple[MethodRoute, ...] = (
    MethodRoute(
        "GET",
        "/contacts/{id}/again",
        CUSTOMER,
        "GetContact",
        "contacts",
        "Get a contact again",
        operation_id="getContactAgain",
    ),
    MethodRoute(
        "GET",
        "/contacts:search",
        CUSTOMER,
        "ListContacts",
        "contacts",
        "Search contacts",
        operation_id="searchContacts",
    ),
    MethodRoute(
        "POST",
        "/contacts:create",
        CUSTOMER,
        "CreateContact",
        "contacts",
        "Create from a whole request",
        body="*",
        status=201,
        operation_id="createContactWhole",
    ),
    MethodRoute(
        "POST",
        "/contacts:quick",
        CUSTOMER,
        "CreateContact",
        "contacts",
        "Create from the contact only",
        body="contact",
        status=201,
        operation_id="createContactQuick",
    ),
    MethodRoute(
        "POST",
        "/contacts/{id}/purge",
        CUSTOMER,
        "DeleteContact",
        "contacts",
        "Purge a contact",
        body="*",
        operation_id="purgeContact",
    ),
    MethodRoute(
        "GET",
        "/pipeline/admin",
        "crm.sales.v1.SalesService",
        "GetPipeline",
        "opportunities",
        "The pipeline, admins only",
        admin_only=True,
        operation_id="getPipelineAdmin",
    ),
    MethodRoute(
        "GET", "/things/export", TEST_SERVICE, "ExportThings", "contacts", "Export things", media_types=(CSV, XLSX)
    ),
    MethodRoute(
        "POST",
        "/things/import",
        TEST_SERVICE,
        "ImportThings",
        "contacts",
        "Import things",
        upload_field="content",
        media_types=(CSV, XLSX),
        deadline_seconds=30,
    ),
)

UPLOAD_LIMIT = 6 * 1024 * 1024


@pytest.fixture
def services(start_fake: Callable[..., RunningFake]) -> RunningFake:
    return start_fake(handlers=_file_handlers)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], services: RunningFake) -> Settings:
    return make_settings(max_upload_bytes=UPLOAD_LIMIT, **services.endpoints())


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings, extra_method_routes=ROUTES)
    yield application
    gateway(application).close()


@pytest.fixture(autouse=True)
def _wire(wired: RunningFake) -> None:
    """Every test here talks to the stand-in services."""


@pytest.fixture
def api(client: FlaskClient, admin_token: str) -> Callable[..., Any]:
    def call(method: str, url: str, token: str = admin_token, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        return client.open(API + url, method=method, headers=headers, **kwargs)

    return call


def _fields(response: Any) -> list[str]:
    assert response.content_type == "application/problem+json", response.data
    return [e["field"] for e in response.get_json().get("errors", [])]


def _create(api: Callable[..., Any], **contact: Any) -> dict[str, Any]:
    response = api("POST", "/contacts:quick", json=contact)
    assert response.status_code == 201, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


# --- path, query and body mapping ---------------------------------------------------------------------


def test_path_parameter_sets_the_request_field(api: Callable[..., Any], wired: RunningFake) -> None:
    created = _create(api, first_name="小明", tags=["vip"])
    response = api("GET", f"/contacts/{created['id']}/again")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body == created
    assert body["phone"] == "" and body["account_id"] == "", "defaults are printed, snake_case"
    assert response.headers["ETag"] == '"1"'
    assert wired.fake.calls[-1][0] == "GetContact"


def test_grpc_errors_map_like_resources(api: Callable[..., Any]) -> None:
    missing = api("GET", "/contacts/0190a0a0-0000-7000-8000-000000000000/again")
    assert missing.status_code == 404 and missing.content_type == "application/problem+json"
    bad = api("POST", "/contacts:quick", json={"email": "not-an-email"})
    assert bad.status_code == 400
    assert _fields(bad) == ["email"], "the violation is named relative to the body"


def test_query_parameters_are_typed_from_the_descriptor(api: Callable[..., Any]) -> None:
    for name in ("a", "b", "c"):
        _create(api, first_name=name, tags=["vip"] if name != "b" else [])
    page = api("GET", "/contacts:search?tag=vip&page_size=1")
    assert page.status_code == 200, page.get_json()
    body = page.get_json()
    assert [c["first_name"] for c in body["items"]] == ["a"] and body["next_page_token"]
    assert _fields(api("GET", "/contacts:search?page_size=lots")) == ["page_size"]
    assert "integer" in api("GET", "/contacts:search?page_size=lots").get_json()["errors"][0]["message"]
    assert _fields(api("GET", "/contacts:search?colour=red&tag=x")) == ["colour"]
    assert _fields(api("GET", "/contacts:search", json={"tag": "vip"})) == ["body"]


def test_body_star_maps_onto_the_whole_request(api: Callable[..., Any]) -> None:
    response = api("POST", "/contacts:create", json={"contact": {"first_name": "Ada", "tags": ["数学"]}})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["first_name"] == "Ada" and response.get_json()["tags"] == ["数学"]
    unknown = api("POST", "/contacts:create", json={"contact": {"first_name": "x"}, "bogus": 1, "other": 2})
    assert unknown.status_code == 400 and _fields(unknown) == ["bogus", "other"]
    assert _fields(api("POST", "/contacts:create", json={"contact": "Ada"})) == ["contact"]
    assert _fields(api("POST", "/contacts:create?tag=x", json={"contact": {}})) == ["tag"]
    assert api("POST", "/contacts:create", data="[1]", content_type="application/json").status_code == 400
    assert api("POST", "/contacts:create", data="{}", content_type="text/plain").status_code == 415


def test_body_field_maps_onto_the_sub_message(api: Callable[..., Any]) -> None:
    unknown = api("POST", "/contacts:quick", json={"first_name": "x", "contact": {}})
    assert _fields(unknown) == ["contact"], "the body is the contact itself"
    assert _fields(api("POST", "/contacts:quick", json={"tags": "vip"})) == ["tags"]


def test_empty_response_is_204_and_path_wins_over_body(api: Callable[..., Any], wired: RunningFake) -> None:
    first, second = _create(api, first_name="a"), _create(api, first_name="b")
    stale = api("POST", f"/contacts/{first['id']}/purge", json={"version": 7})
    assert stale.status_code == 409 and _fields(stale) == ["version"]
    done = api("POST", f"/contacts/{first['id']}/purge", json={"version": 1, "id": second["id"]})
    assert done.status_code == 204 and done.data == b""
    assert api("GET", f"/contacts/{first['id']}/again").status_code == 404
    assert api("GET", f"/contacts/{second['id']}/again").status_code == 200, "the body's id was ignored"
    assert api("POST", f"/contacts/{second['id']}/purge").status_code == 204, "an empty body is {}"


# --- access -------------------------------------------------------------------------------------------


def test_admin_only_route_refuses_a_member(api: Callable[..., Any], member_token: str) -> None:
    ok = api("GET", "/pipeline/admin")
    assert ok.status_code == 200 and ok.get_json()["stages"][0]["key"] == "lead"
    refused = api("GET", "/pipeline/admin", token=member_token)
    assert refused.status_code == 403 and refused.content_type == "application/problem+json"
    assert "admin" in refused.get_json()["detail"]


def test_no_token_is_401(client: FlaskClient) -> None:
    response = client.get(f"{API}/contacts:search")
    assert response.status_code == 401 and response.content_type == "application/problem+json"


def test_tenants_are_isolated(
    api: Callable[..., Any], make_tenant: Callable[..., TenantInfo], login: Callable[..., dict[str, Any]]
) -> None:
    mine = _create(api, first_name="secret")
    other = make_tenant("globex")
    token = login(other.slug, other.admin_email, PASSWORD)["access_token"]
    assert api("GET", f"/contacts/{mine['id']}/again", token=token).status_code == 404
    assert api("GET", "/contacts:search", token=token).get_json()["items"] == []
    assert api("POST", f"/contacts/{mine['id']}/purge", token=token).status_code == 404
    assert api("GET", f"/contacts/{mine['id']}/again").status_code == 200


def test_api_client_scopes_follow_read_and_write(
    client: FlaskClient, api: Callable[..., Any], gw: Gateway, tenant: TenantInfo, app: Flask
) -> None:
    new = api_clients.create(
        gw.db,
        gw.pepper,
        tenant_id=tenant.id,
        name="reader",
        roles=["member"],
        scopes=["contacts:read"],
        expires_at=None,
    )
    grant = {"grant_type": "client_credentials", "client_id": new.client.client_id, "client_secret": new.secret}
    token = client.post(f"{API}/auth/token", json=grant).get_json()["access_token"]
    assert api("GET", "/contacts:search", token=token).status_code == 200
    refused = api("POST", "/contacts:quick", token=token, json={"first_name": "x"})
    assert refused.status_code == 403 and "contacts:write" in refused.get_json()["detail"]
    ops = operations(app)
    assert ops["searchContacts"].required_scope == "contacts:read"
    assert ops["purgeContact"].required_scope == "contacts:write"
    explicit = MethodRoute("GET", "/x", CUSTOMER, "ListContacts", "contacts", "s", write=True)
    assert explicit.is_write and not MethodRoute("POST", "/x", CUSTOMER, "GetContact", "c", "s", write=False).is_write


# --- files: downloads and uploads ---------------------------------------------------------------------


def test_file_response_returns_the_bytes_as_a_download(api: Callable[..., Any], wired: RunningFake) -> None:
    response = api("GET", "/things/export?ids=1&ids=2&ids=3&limit=2&format=csv")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.data == "id\n1,名字\n2,名字\n".encode()
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert f"filename*=UTF-8''{quote(EXPORT_FILENAME)}" in disposition
    assert "filename=export.csv;" in disposition, "an ASCII fallback for old clients"
    assert _fields(api("GET", "/things/export?limit=ten")) == ["limit"]
    assert wired.fake.calls[-1][0] == "ExportThings"


def test_raw_upload_with_query_parameters(api: Callable[..., Any]) -> None:
    data = "external_id,first_name\n1,小明\n".encode()
    response = api("POST", "/things/import?dry_run=true&format=csv", data=data, content_type=CSV)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body == {
        "size": len(data),
        "dry_run": True,
        "format": "csv",
        "filename": "",
        "content_type": CSV,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    xlsx = b"PK\x03\x04" + bytes(range(256)) * 8
    sent = api("POST", "/things/import?content_type=override", data=xlsx, content_type=XLSX).get_json()
    assert sent["sha256"] == hashlib.sha256(xlsx).hexdigest() and sent["content_type"] == "override"
    assert _fields(api("POST", "/things/import?dry_run=maybe", data=data, content_type=CSV)) == ["dry_run"]
    assert _fields(api("POST", "/things/import?content=abc", data=data, content_type=CSV)) == ["content"]
    assert _fields(api("POST", "/things/import", data=b"", content_type=CSV)) == ["file"]


def test_multipart_upload(api: Callable[..., Any]) -> None:
    data = b"external_id,first_name\n1,Ada\n"
    response = api(
        "POST",
        "/things/import?format=csv",
        data={"file": (io.BytesIO(data), "客户.csv", CSV), "dry_run": "1"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["size"] == len(data) and body["filename"] == "客户.csv" and body["content_type"] == CSV
    assert body["dry_run"] is True and body["format"] == "csv"
    missing = api(
        "POST", "/things/import", data={"other": (io.BytesIO(data), "x.csv")}, content_type="multipart/form-data"
    )
    assert _fields(missing) == ["other"]
    assert _fields(api("POST", "/things/import", data={"dry_run": "1"}, content_type="multipart/form-data")) == ["file"]


def test_upload_limits(api: Callable[..., Any]) -> None:
    # Larger than the 1 MiB JSON limit, within GATEWAY_MAX_UPLOAD_BYTES.
    big = b"x" * (3 * 1024 * 1024)
    assert api("POST", "/things/import", data=big, content_type=CSV).get_json()["size"] == len(big)
    multipart = {"file": (io.BytesIO(big), "big.csv", CSV)}
    assert api("POST", "/things/import", data=multipart, content_type="multipart/form-data").status_code == 200
    too_big = api("POST", "/things/import", data=b"x" * (UPLOAD_LIMIT + 1), content_type=CSV)
    assert too_big.status_code == 413 and too_big.content_type == "application/problem+json"
    assert "6 MiB" in too_big.get_json()["detail"]
    # Within the gateway's limit but above what the (stand-in) service accepts: 413, not a rate limit.
    refused = api("POST", "/things/import", data=b"x" * (5 * 1024 * 1024), content_type=CSV)
    assert refused.status_code == 413 and "customer" in refused.get_json()["detail"]
    # JSON routes keep the 1 MiB limit.
    huge = '{"first_name": "' + "x" * (1024 * 1024) + '"}'
    json_too_big = api("POST", "/contacts:quick", data=huge, content_type="application/json")
    assert json_too_big.status_code == 413 and "1 MiB" in json_too_big.get_json()["detail"]


# --- the table and the documentation ------------------------------------------------------------------


def test_extra_routes_stay_out_of_other_apps(settings: Settings) -> None:
    plain = create_app(settings)
    try:
        assert "getContactAgain" not in operations(plain)
        assert all(r not in METHOD_ROUTES for r in ROUTES)
    finally:
        gateway(plain).close()


def test_the_global_table_binds() -> None:
    bound = bound_methods(METHOD_ROUTES)
    assert len(bound) == len(METHOD_ROUTES)
    ids = [b.operation_id for b in bound]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("route", "error"),
    [
        (MethodRoute("GET", "/x/{nope}", CUSTOMER, "GetContact", "contacts", "s"), "nope"),
        (MethodRoute("GET", "/x", CUSTOMER, "NoSuchMethod", "contacts", "s"), "NoSuchMethod"),
        (MethodRoute("POST", "/x", CUSTOMER, "CreateContact", "contacts", "s", body="nope"), "nope"),
        (MethodRoute("POST", "/x", CUSTOMER, "GetContact", "contacts", "s", upload_field="id"), "bytes"),
        (MethodRoute("TRACE", "/x", CUSTOMER, "GetContact", "contacts", "s"), "HTTP method"),
        (MethodRoute("GET", "/api/v1/x", CUSTOMER, "GetContact", "contacts", "s"), "relative"),
    ],
)
def test_misfitting_routes_fail_loudly(route: MethodRoute, error: str) -> None:
    with pytest.raises((LookupError, ValueError), match=re.escape(error)):
        bind_method(route)


def test_openapi_documents_every_method_route(app: Flask) -> None:
    doc = build(app)
    paths = doc["paths"]
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z_]+:)?(\w+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths.get(path, {}), f"{method} {path}"

    again = paths["/api/v1/contacts/{id}/again"]["get"]
    assert again["parameters"] == [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    assert again["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/crm.customer.v1.Contact"
    }
    assert "contacts:read" in again["description"]

    # A list response answers {items, next_page_token}, whatever its repeated field is called.
    listed = paths["/api/v1/contacts:search"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed["properties"]["items"]["items"] == {"$ref": "#/components/schemas/crm.customer.v1.Contact"}
    assert set(listed["properties"]) == {"items", "next_page_token"}
    search = {p["name"]: p for p in paths["/api/v1/contacts:search"]["get"]["parameters"]}
    assert search["page_size"]["schema"] == {"type": "integer", "format": "int32"} and "tag" in search

    whole = paths["/api/v1/contacts:create"]["post"]
    assert whole["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/crm.customer.v1.CreateContactRequest"
    }
    assert "201" in whole["responses"] and "parameters" not in whole
    assert "contacts:write" in whole["description"]
    quick = paths["/api/v1/contacts:quick"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert quick == {"$ref": "#/components/schemas/crm.customer.v1.Contact"}

    purge = paths["/api/v1/contacts/{id}/purge"]["post"]
    assert set(purge["responses"]) >= {"204", "400", "401", "403", "404", "409", "503"}
    assert "content" not in purge["responses"]["204"]
    assert "admin role" in paths["/api/v1/pipeline/admin"]["get"]["description"]

    export = paths["/api/v1/things/export"]["get"]
    assert set(export["responses"]["200"]["content"]) == {CSV, XLSX}
    assert "Content-Disposition" in export["responses"]["200"]["headers"]
    assert {p["name"] for p in export["parameters"]} == {"format", "ids", "limit"}
    upload = paths["/api/v1/things/import"]["post"]
    assert set(upload["requestBody"]["content"]) == {"multipart/form-data", CSV, XLSX}
    assert {p["name"] for p in upload["parameters"]} == {"dry_run", "format", "filename", "content_type"}
    assert "413" in upload["responses"]

    schemas = doc["components"]["schemas"]
    for name in ("crm.customer.v1.CreateContactRequest", "crm.sales.v1.Pipeline", "crm.customer.v1.ImportThingsResult"):
        assert name in schemas, name
    ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_openapi_references_resolve_and_schemas_are_valid(app: Flask) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = build(app)
    text = repr(doc)
    for target in set(re.findall(r"#/components/schemas/([\w.]+)", text)):
        assert target in doc["components"]["schemas"], target
    for name, schema in doc["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except Exception as exc:
            raise AssertionError(f"{name}: {exc}") from exc
