"""The customer record through the gateway's REST API, as an integrator uses it: the new fields as JSON,
search and filters as query parameters (repeated `tags`, `order_by`, RFC 3339 ranges), problems naming the
field, `GET /contacts/{id}/history`, and `GET/PATCH /customer-settings` for admins only."""

from __future__ import annotations

import pytest

from crm_gateway.testing import Gateway, People, people, problem_fields


@pytest.fixture(scope="module")
def acme(gateway: Gateway) -> People:
    return people(gateway, "rec-acme")


@pytest.fixture(scope="module")
def globex(gateway: Gateway) -> People:
    return people(gateway, "rec-globex")


def test_the_record_as_json(acme: People) -> None:
    body = {
        "first_name": "伟",
        "last_name": "张",
        "display_name": "ignored: output only",
        "gender": "male",
        "birthday": "1990-01-01",
        "phones": [{"type": "mobile", "number": "138 0013 8000"}],
        "emails": [{"type": "work", "address": "Wei@Example.COM"}],
        "addresses": [{"type": "work", "city": "深圳", "country": "cn"}],
        "social_accounts": [{"platform": "wechat", "handle": "zw"}],
        "preferences": [{"key": "渠道", "value": "微信"}],
        "interests": ["羽毛球"],
        "classification": "core",
        "lifecycle_stage": "prospect",
        "source": "event",
        "external_id": "ERP-9",
        "tags": ["重要", "深圳"],
    }
    created = acme.admin.post("/api/v1/contacts", json=body)
    assert created.status_code == 201, created.text
    c = created.json()
    assert (c["display_name"], c["phone"], c["email"]) == ("张伟", "+8613800138000", "wei@example.com")
    assert c["phones"] == [{"type": "mobile", "number": "+8613800138000", "primary": True}]
    assert c["addresses"][0]["country"] == "CN" and c["addresses"][0]["primary"] is True
    patched = acme.admin.patch(f"/api/v1/contacts/{c['id']}", json={"lifecycle_stage": "customer"})
    assert patched.status_code == 200, patched.text
    bad = acme.admin.post(
        "/api/v1/contacts",
        json={"last_name": "X", "phones": [{"number": "1"}], "birthday": "2999-01-01", "gender": "robot"},
    )
    assert bad.status_code == 400
    assert {"phones[0].number", "birthday", "gender"} <= problem_fields(bad)

    params = [("tags", "重要"), ("tags", "深圳"), ("q", "张伟"), ("order_by", "-update_time,last_name")]
    found = acme.admin.get("/api/v1/contacts", params=params)
    assert found.status_code == 200, found.text
    assert [x["id"] for x in found.json()["items"]] == [c["id"]]
    window = {"created_after": "2000-01-01", "created_before": "2999-01-01T00:00:00+08:00"}
    assert [x["id"] for x in acme.admin.get("/api/v1/contacts", params=window).json()["items"]] == [c["id"]]
    for params_bad, field in (
        ({"order_by": "secret"}, "order_by"),
        ({"created_after": "last tuesday"}, "created_after"),
        ({"classification": "vip"}, "classification"),
    ):
        r = acme.admin.get("/api/v1/contacts", params=params_bad)
        assert r.status_code == 400 and field in problem_fields(r), r.text

    history = acme.admin.get(f"/api/v1/contacts/{c['id']}/history", params={"field": "lifecycle_stage"})
    assert history.status_code == 200, history.text
    changes = history.json()["items"]
    assert [(h["old_value"], h["new_value"]) for h in changes] == [("prospect", "customer"), ("", "prospect")]
    assert problem_fields(acme.admin.get(f"/api/v1/contacts/{c['id']}/history", params={"field": "email"})) == {"field"}


def test_history_is_not_found_across_tenants(acme: People, globex: People) -> None:
    c = acme.admin.post("/api/v1/contacts", json={"last_name": "Secret"}).json()
    assert globex.admin.get(f"/api/v1/contacts/{c['id']}/history").status_code == 404
    assert globex.admin.get("/api/v1/contacts", params={"q": "secret"}).json()["items"] == []


def test_settings_for_admins_only(acme: People) -> None:
    for caller in (acme.member, acme.manager):
        assert caller.get("/api/v1/customer-settings").status_code == 403
        assert caller.patch("/api/v1/customer-settings", json={"title_case_names": True}).status_code == 403
    got = acme.admin.get("/api/v1/customer-settings")
    assert got.status_code == 200, got.text
    assert got.json()["duplicate_policy"] == "warn" and got.json()["default_phone_region"] == "CN"
    changed = acme.admin.patch(
        "/api/v1/customer-settings", json={"title_case_names": True, "duplicate_policy": "block"}
    )
    assert changed.status_code == 200, changed.text
    s = changed.json()
    assert (s["title_case_names"], s["duplicate_policy"], s["default_phone_region"], s["version"]) == (
        True,
        "block",
        "CN",
        1,
    )
    assert problem_fields(acme.admin.patch("/api/v1/customer-settings", json={"default_phone_region": "XX"})) == {
        "default_phone_region"
    }
    assert problem_fields(acme.admin.patch("/api/v1/customer-settings", json={"colour": "red"})) == {"colour"}
    named = acme.admin.post("/api/v1/contacts", json={"first_name": "jean", "last_name": "DUPONT"}).json()
    assert named["display_name"] == "Jean Dupont"


def test_dedupe_settings_over_rest(gateway: Gateway) -> None:
    initech = people(gateway, "rec-initech")
    got = initech.admin.get("/api/v1/customer-settings").json()
    assert (got["duplicate_threshold"], got["merge_retention_days"]) == (70, 30)
    changed = initech.admin.patch("/api/v1/customer-settings", json={"duplicate_threshold": 80})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["duplicate_threshold"], changed.json()["merge_retention_days"]) == (80, 30)
    changed = initech.admin.patch("/api/v1/customer-settings", json={"merge_retention_days": 7, "version": 1})
    assert changed.status_code == 200, changed.text
    s = initech.admin.get("/api/v1/customer-settings").json()
    assert (s["duplicate_threshold"], s["merge_retention_days"], s["version"]) == (80, 7, 2)
    for body, fields in (
        ({"duplicate_threshold": 101}, {"duplicate_threshold"}),
        ({"duplicate_threshold": -1}, {"duplicate_threshold"}),
        ({"merge_retention_days": 3651}, {"merge_retention_days"}),
        ({"duplicate_threshold": "eighty"}, {"duplicate_threshold"}),
    ):
        bad = initech.admin.patch("/api/v1/customer-settings", json=body)
        assert bad.status_code == 400 and problem_fields(bad) == fields, bad.text
    assert "between 1 and 100" in str(
        initech.admin.patch("/api/v1/customer-settings", json={"duplicate_threshold": 101}).json()
    )
    assert initech.manager.patch("/api/v1/customer-settings", json={"duplicate_threshold": 50}).status_code == 403
    reset = initech.admin.patch("/api/v1/customer-settings", json={"duplicate_threshold": 0}).json()
    assert (reset["duplicate_threshold"], reset["merge_retention_days"], reset["version"]) == (70, 7, 3)
    # The threshold applies on create: at 40 two people called 张伟 are likely duplicates.
    initech.admin.patch("/api/v1/customer-settings", json={"duplicate_threshold": 40})
    first = initech.admin.post("/api/v1/contacts", json={"last_name": "张伟"}).json()
    second = initech.admin.post("/api/v1/contacts", json={"last_name": "张伟"}).json()
    assert [(c["contact_id"], c["score"]) for c in second["duplicate_candidates"]] == [(first["id"], 40)]


def test_an_admin_overrides_the_block_policy_with_a_query_parameter(gateway: Gateway) -> None:
    umbrella = people(gateway, "rec-umbrella")
    assert umbrella.admin.patch("/api/v1/customer-settings", json={"duplicate_policy": "block"}).status_code == 200
    body = {"first_name": "Alice", "last_name": "Abernathy", "email": "alice@umbrella.example"}
    first = umbrella.admin.post("/api/v1/contacts", json=body)
    assert first.status_code == 201, first.text
    blocked = umbrella.admin.post("/api/v1/contacts", json=body)
    assert blocked.status_code == 409 and "email" in problem_fields(blocked), blocked.text
    # A manager's override is not honoured; an admin's is.
    assert umbrella.manager.post("/api/v1/contacts?allow_duplicate=true", json=body).status_code == 409
    allowed = umbrella.admin.post("/api/v1/contacts?allow_duplicate=true", json=body)
    assert allowed.status_code == 201, allowed.text
    assert [c["contact_id"] for c in allowed.json()["duplicate_candidates"]] == [first.json()["id"]]
    assert problem_fields(umbrella.admin.post("/api/v1/contacts?allow_duplicate=perhaps", json=body)) == {
        "allow_duplicate"
    }
    assert problem_fields(umbrella.admin.post("/api/v1/contacts?colour=red", json=body)) == {"colour"}
    listed = umbrella.admin.get("/api/v1/contacts", params={"q": "alice@umbrella.example"}).json()["items"]
    assert len(listed) == 2  # the refused requests wrote nothing
    spec = umbrella.admin.get("/api/v1/openapi.json").json()
    assert "allow_duplicate" in [p["name"] for p in spec["paths"]["/api/v1/contacts"]["post"]["parameters"]]
