"""Bad input gets a 4xx problem+json naming the field, never a 5xx; nothing is half-written; Chinese text
round-trips intact."""

from __future__ import annotations

import pytest

from tests.platform_harness import Platform, Tenant

PROBLEM = "application/problem+json"


def _fields(response) -> set[str]:  # type: ignore[no-untyped-def]
    body = response.json()
    return {e["field"] for e in body.get("errors", [])}


def _assert_problem(response, status_range=(400, 499), field: str | None = None) -> None:  # type: ignore[no-untyped-def]
    assert status_range[0] <= response.status_code <= status_range[1], response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["status"] == response.status_code
    assert body["title"]
    if field is not None:
        assert field in _fields(response) or field in body.get("detail", ""), body


def test_malformed_json(platform: Platform, tenant_a: Tenant) -> None:
    with platform.http(tenant_a) as api:
        r = api.post("/api/v1/contacts", content=b'{"first_name": "x",', headers={"content-type": "application/json"})
        _assert_problem(r)


def test_body_must_be_an_object(platform: Platform, tenant_a: Tenant) -> None:
    with platform.http(tenant_a) as api:
        _assert_problem(api.post("/api/v1/contacts", json=["not", "an", "object"]))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"first_name": 12345}, "first_name"),
        ({"last_name": "x", "tags": "not-a-list"}, "tags"),
        ({"last_name": "x", "shoe_size": 44}, "shoe_size"),
        ({"last_name": "x", "email": "not-an-email"}, "email"),
        ({"last_name": "x", "phone": "12"}, "phone"),
        ({"first_name": "", "last_name": ""}, "last_name"),
    ],
)
def test_invalid_contact_fields_are_named(platform: Platform, tenant_a: Tenant, body: dict, field: str) -> None:
    with platform.http(tenant_a) as api:
        before = len(api.get("/api/v1/contacts", params={"page_size": 500}).json()["items"])
        r = api.post("/api/v1/contacts", json=body)
        _assert_problem(r, field=field)
        after = len(api.get("/api/v1/contacts", params={"page_size": 500}).json()["items"])
        assert after == before, "a rejected create must not write anything"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/opportunities", {"name": "x", "amount": "lots", "currency": "CNY"}, "amount"),
        ("/api/v1/opportunities", {"name": "x", "amount": "1", "currency": "yuan"}, "currency"),
        ("/api/v1/opportunities", {"name": "x", "amount": "1", "currency": "CNY", "stage": "dreaming"}, "stage"),
        ("/api/v1/tickets", {"subject": "x", "priority": "whenever"}, "priority"),
        ("/api/v1/campaigns", {"name": "x", "channel": "carrier-pigeon"}, "channel"),
        (
            "/api/v1/campaigns",
            {"name": "x", "channel": "web", "start_date": "2026-12-01", "end_date": "2026-11-01"},
            "end_date",
        ),
    ],
)
def test_invalid_fields_in_other_services(
    platform: Platform, tenant_a: Tenant, path: str, body: dict, field: str
) -> None:
    with platform.http(tenant_a) as api:
        _assert_problem(api.post(path, json=body), field=field)


@pytest.mark.parametrize("size", ["100000", "-1", "abc"])
def test_absurd_page_size(platform: Platform, tenant_a: Tenant, size: str) -> None:
    with platform.http(tenant_a) as api:
        _assert_problem(api.get("/api/v1/contacts", params={"page_size": size}), field="page_size")


def test_garbage_page_token(platform: Platform, tenant_a: Tenant) -> None:
    with platform.http(tenant_a) as api:
        _assert_problem(api.get("/api/v1/contacts", params={"page_token": "garbage!"}), field="page_token")


def test_stale_version_is_a_conflict_naming_version(platform: Platform, tenant_a: Tenant) -> None:
    with platform.http(tenant_a) as api:
        c = api.post("/api/v1/contacts", json={"first_name": "Grace", "last_name": "Hopper"}).json()
        first = api.patch(f"/api/v1/contacts/{c['id']}", json={"first_name": "G.", "version": c["version"]})
        assert first.status_code == 200, first.text
        assert first.json()["version"] == c["version"] + 1
        stale = api.patch(f"/api/v1/contacts/{c['id']}", json={"first_name": "Amazing", "version": c["version"]})
        _assert_problem(stale, field="version")
        assert stale.status_code == 409
        assert api.get(f"/api/v1/contacts/{c['id']}").json()["first_name"] == "G."


def test_chinese_text_round_trips(platform: Platform, tenant_a: Tenant) -> None:
    name = "欧阳娜娜"
    tags = ["重要客户", "北京"]
    with platform.http(tenant_a) as api:
        created = api.post("/api/v1/contacts", json={"first_name": "娜娜", "last_name": "欧阳", "tags": tags})
        assert created.status_code == 201, created.text
        got = api.get(f"/api/v1/contacts/{created.json()['id']}").json()
        assert got["first_name"] + got["last_name"] == "娜娜欧阳"
        assert got["tags"] == tags
        found = api.get("/api/v1/contacts", params={"q": "欧阳"}).json()["items"]
        assert any(c["last_name"] == "欧阳" for c in found), name


def test_unknown_ids_are_404_problems(platform: Platform, tenant_a: Tenant) -> None:
    with platform.http(tenant_a) as api:
        _assert_problem(api.get("/api/v1/contacts/00000000-0000-7000-8000-000000000000"), (404, 404))
