"""The OpenAPI document is generated from the route table and documents every route."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def _doc(client: FlaskClient, token: str) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    doc: dict[str, Any] = response.get_json()
    return doc


def test_every_route_is_documented(app: Flask, client: FlaskClient, admin_token: str) -> None:
    doc = _doc(client, admin_token)
    missing = []
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z_]+:)?(\w+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - IGNORED_METHODS:
            if method.lower() not in doc["paths"].get(path, {}):
                missing.append(f"{method} {path}")
    assert missing == [], f"undocumented routes: {missing}"


def test_document_shape(client: FlaskClient, admin_token: str) -> None:
    doc = _doc(client, admin_token)
    assert doc["openapi"] == "3.1.0"
    paths = doc["paths"]
    for expected in (
        "/api/v1/auth/token",
        "/.well-known/jwks.json",
        "/healthz",
        "/readyz",
        "/api/v1/contacts",
        "/api/v1/contacts/{id}",
        "/api/v1/accounts/{id}",
        "/api/v1/opportunities",
        "/api/v1/campaigns/{id}",
        "/api/v1/tickets",
        "/api/v1/pipeline",
        "/api/v1/analytics/summary",
        "/api/v1/users",
    ):
        assert expected in paths, expected
    assert set(paths["/api/v1/contacts/{id}"]) == {"get", "patch", "delete"}
    assert paths["/api/v1/auth/token"]["post"]["security"] == []
    assert paths["/api/v1/contacts"]["get"]["security"] == [{"bearerAuth": []}]
    ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(ids) == len(set(ids))

    list_params = {p["name"]: p for p in paths["/api/v1/contacts"]["get"]["parameters"]}
    assert {"page_size", "page_token", "owner_id", "account_id", "tag", "tags", "q", "order_by"} <= set(list_params)
    assert list_params["tags"]["schema"]["type"] == "array"
    assert list_params["page_size"]["schema"] == {"type": "integer", "format": "int32"}
    # The common parameters say what they take; summaries read as English.
    assert "`key=` matches records without a value" in list_params["custom_filter"]["description"]
    assert "custom.<key>" in list_params["order_by"]["description"]
    assert "tags" in list_params["tag"]["description"]
    assert paths["/api/v1/accounts"]["post"]["summary"] == "Create an account"
    assert paths["/api/v1/custom-fields"]["get"]["summary"] == "List custom fields"
    assert paths["/api/v1/custom-fields/{id}"]["get"]["summary"] == "Get one custom field definition"
    assert "opportunitie " not in json.dumps(doc)
    created = paths["/api/v1/contacts"]["post"]["responses"]["201"]
    assert "Location" in created["headers"]
    assert paths["/api/v1/contacts"]["post"]["responses"]["400"]["content"]["application/problem+json"]


def test_message_schemas_use_proto_names_and_types(client: FlaskClient, admin_token: str) -> None:
    schemas = _doc(client, admin_token)["components"]["schemas"]
    contact = schemas["crm.customer.v1.Contact"]["properties"]
    assert contact["first_name"] == {"type": "string"}
    assert contact["tags"] == {"type": "array", "items": {"type": "string"}}
    assert contact["version"] == {"type": "integer", "format": "int32"}
    assert contact["create_time"]["format"] == "date-time" and contact["create_time"]["readOnly"] is True
    assert contact["id"]["readOnly"] is True
    opportunity = schemas["crm.sales.v1.Opportunity"]["properties"]
    assert opportunity["contact_name"]["readOnly"] and opportunity["status"]["readOnly"]
    assert "readOnly" not in schemas["crm.marketing.v1.Campaign"]["properties"]["status"]
    summary = schemas["crm.analytics.v1.Summary"]["properties"]
    assert summary["pipeline_by_stage"]["items"] == {"$ref": "#/components/schemas/crm.common.v1.MoneyBucket"}
    assert "crm.common.v1.MoneyBucket" in schemas
    for name in schemas:
        for prop in schemas[name].get("properties", {}):
            assert prop == prop.lower(), f"{name}.{prop} is not snake_case"


def test_every_reference_resolves(client: FlaskClient, admin_token: str) -> None:
    doc = _doc(client, admin_token)
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for target in refs:
        assert target.startswith("#/components/schemas/")
        assert target.removeprefix("#/components/schemas/") in doc["components"]["schemas"], target


def test_path_parameters_match_templates(client: FlaskClient, admin_token: str) -> None:
    for path, item in _doc(client, admin_token)["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for op in item.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (path, op["operationId"])


def test_component_schemas_are_valid_json_schema(client: FlaskClient, admin_token: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")  # dev dependency (today through kubernetes-validate)
    Draft202012Validator = jsonschema.Draft202012Validator

    for name, schema in _doc(client, admin_token)["components"]["schemas"].items():
        try:
            Draft202012Validator.check_schema(schema)
        except Exception as exc:
            raise AssertionError(f"{name}: {exc}") from exc


def test_responses_match_their_schemas(client: FlaskClient, admin_token: str) -> None:
    """What the gateway returns validates against what it documents (users, problems, tokens, JWKS)."""
    jsonschema = pytest.importorskip("jsonschema")  # dev dependency (today through kubernetes-validate)
    Draft202012Validator = jsonschema.Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    doc = _doc(client, admin_token)
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:crm-openapi", resource)

    def check(body: Any, name: str) -> None:
        schema = {"$ref": f"urn:crm-openapi#/components/schemas/{name}"}
        Draft202012Validator(schema, registry=registry).validate(body)

    auth = {"Authorization": f"Bearer {admin_token}"}
    check(client.get("/api/v1/users", headers=auth).get_json(), "UserPage")
    check(client.get("/.well-known/jwks.json").get_json(), "JWKS")
    check(client.get("/healthz").get_json(), "Health")
    check(client.get("/api/v1/users/nope", headers=auth).get_json(), "Problem")
    check({"grant_type": "refresh_token", "refresh_token": "x"}, "TokenRequest")
