"""Custom fields through the gateway's REST API, as an integrator uses them: `/api/v1/custom-fields` is a
standard resource whose writes need the admin role (403 for members and managers, reads open to the
tenant); values are a JSON object on contacts and accounts; problems come back as problem+json naming
`custom_fields.<key>` or `custom_filter[i]`; another tenant's definitions are not found."""

from __future__ import annotations

import pytest

from crm_gateway.testing import Gateway, People, people, problem_fields


@pytest.fixture(scope="module")
def acme(gateway: Gateway) -> People:
    return people(gateway, "cf-acme")


@pytest.fixture(scope="module")
def globex(gateway: Gateway) -> People:
    return people(gateway, "cf-globex")


SEGMENT = {
    "entity": "contact",
    "key": "segment",
    "label": "Segment",
    "label_zh": "客户分群",
    "type": "select",
    "options": [{"key": "A", "label": "Key accounts"}, {"key": "B", "label": "Others"}],
}


def test_definitions_are_a_resource_only_admins_change(acme: People) -> None:
    for caller in (acme.member, acme.manager):
        denied = caller.post("/api/v1/custom-fields", json=SEGMENT)
        assert denied.status_code == 403, denied.text
        assert denied.headers["content-type"].startswith("application/problem+json")
    created = acme.admin.post("/api/v1/custom-fields", json=SEGMENT)
    assert created.status_code == 201, created.text
    body = created.json()
    assert created.headers["Location"] == f"/api/v1/custom-fields/{body['id']}"
    assert body["options"][0] == {"key": "A", "label": "Key accounts", "label_zh": ""}
    assert (body["key"], body["type"], body["label_zh"], body["version"]) == ("segment", "select", "客户分群", 1)
    for caller in (acme.member, acme.manager, acme.admin):
        listed = caller.get("/api/v1/custom-fields", params={"entity": "contact"})
        assert listed.status_code == 200 and [d["key"] for d in listed.json()["items"]] == ["segment"]
        assert caller.get(f"/api/v1/custom-fields/{body['id']}").json()["key"] == "segment"
    assert acme.member.patch(f"/api/v1/custom-fields/{body['id']}", json={"label": "x"}).status_code == 403
    assert acme.member.delete(f"/api/v1/custom-fields/{body['id']}").status_code == 403
    renamed = acme.admin.patch(f"/api/v1/custom-fields/{body['id']}", json={"label": "Tier", "version": 1})
    assert renamed.status_code == 200 and renamed.json()["label"] == "Tier"
    assert problem_fields(acme.admin.post("/api/v1/custom-fields", json=SEGMENT)) == {"key"}  # 409: taken
    bad = acme.admin.post("/api/v1/custom-fields", json={**SEGMENT, "key": "Bad Key", "type": "colour"})
    assert bad.status_code == 400 and problem_fields(bad) == {"key", "type"}
    immutable = acme.admin.patch(f"/api/v1/custom-fields/{body['id']}", json={"type": "text"})
    assert immutable.status_code == 400 and problem_fields(immutable) == {"update_mask"}
    openapi = acme.admin.get("/api/v1/openapi.json").json()
    assert "Requires the admin role" in openapi["paths"]["/api/v1/custom-fields"]["post"]["description"]
    assert "admin" not in openapi["paths"]["/api/v1/custom-fields"]["get"].get("description", "")


def test_values_are_a_json_object_validated_and_filterable(acme: People) -> None:
    admin = acme.admin
    for definition in (
        {"entity": "contact", "key": "score", "label": "Score", "type": "number"},
        {"entity": "contact", "key": "renewal", "label": "Renewal", "type": "date"},
        {"entity": "contact", "key": "vip", "label": "VIP", "type": "boolean"},
        {"entity": "contact", "key": "note", "label": "Note", "type": "text", "required": True},
        {
            "entity": "contact",
            "key": "channels",
            "label": "Channels",
            "type": "multi_select",
            "options": [{"key": "email"}, {"key": "sms"}],
        },
    ):
        assert admin.post("/api/v1/custom-fields", json=definition).status_code == 201
    values = {"score": 42.5, "renewal": "2027-01-31", "vip": True, "channels": ["email", "sms"], "note": "hi"}
    created = admin.post("/api/v1/contacts", json={"last_name": "Wang", "custom_fields": values})
    assert created.status_code == 201, created.text
    assert created.json()["custom_fields"] == values
    other = admin.post("/api/v1/contacts", json={"last_name": "Zhao", "custom_fields": {"score": 3, "note": "x"}})
    assert other.status_code == 201, other.text
    assert '"score": 3,' in other.text or '"score": 3}' in other.text  # written 3, never read back as 3.0

    wrong = admin.post(
        "/api/v1/contacts",
        json={
            "last_name": "Bad",
            "custom_fields": {"score": "42", "renewal": "31.01.2027", "vip": "yes", "channels": ["fax"], "x": 1},
        },
    )
    assert wrong.status_code == 400
    assert problem_fields(wrong) == {
        "custom_fields.score",
        "custom_fields.renewal",
        "custom_fields.vip",
        "custom_fields.channels",
        "custom_fields.x",
        "custom_fields.note",  # required
    }
    contact_id = created.json()["id"]
    # PATCH merges custom_fields key by key (JSON merge patch): the keys not named keep their values.
    one_key = admin.patch(f"/api/v1/contacts/{contact_id}", json={"custom_fields": {"note": "only this"}})
    assert one_key.status_code == 200, one_key.text
    assert one_key.json()["custom_fields"] == {**values, "note": "only this"}
    assert one_key.headers["ETag"] == '"2"'
    # null removes a key; a required one cannot be removed, and a bad value names its key. Nothing changes.
    refused = admin.patch(
        f"/api/v1/contacts/{contact_id}", json={"custom_fields": {"note": None, "score": "high", "vip": None}}
    )
    assert refused.status_code == 400
    assert problem_fields(refused) == {"custom_fields.note", "custom_fields.score"}
    removed = admin.patch(f"/api/v1/contacts/{contact_id}", json={"custom_fields": {"score": None, "vip": None}})
    assert removed.status_code == 200, removed.text
    assert removed.json()["custom_fields"] == {
        "renewal": "2027-01-31",
        "channels": ["email", "sms"],
        "note": "only this",
    }
    assert removed.headers["ETag"] == '"3"'
    unknown = admin.patch(f"/api/v1/contacts/{contact_id}", json={"custom_fields": {"nope": 1}})
    assert unknown.status_code == 400 and problem_fields(unknown) == {"custom_fields.nope"}

    def listed(*conditions: str) -> list[str]:
        r = admin.get("/api/v1/contacts", params=[("custom_filter", c) for c in conditions])
        assert r.status_code == 200, r.text
        return [c["last_name"] for c in r.json()["items"]]

    assert listed("note=only this") == ["Wang"]
    assert listed("score>=1") == ["Zhao"]
    assert listed("note!=", "score<1") == []
    assert listed("score=") == ["Wang"]
    bad_filter = admin.get("/api/v1/contacts", params=[("custom_filter", "score>=1"), ("custom_filter", "vip=maybe")])
    assert bad_filter.status_code == 400 and problem_fields(bad_filter) == {"custom_filter[1]"}


def test_another_tenants_definitions_are_invisible(acme: People, globex: People) -> None:
    mine = acme.admin.post(
        "/api/v1/custom-fields", json={"entity": "account", "key": "budget", "label": "Budget", "type": "number"}
    )
    assert mine.status_code == 201, mine.text
    theirs = globex.admin.post(
        "/api/v1/custom-fields",
        json={"entity": "account", "key": "budget", "label": "Budget", "type": "select", "options": [{"key": "low"}]},
    )
    assert theirs.status_code == 201, theirs.text
    definition_id = mine.json()["id"]
    assert globex.admin.get(f"/api/v1/custom-fields/{definition_id}").status_code == 404
    assert globex.admin.delete(f"/api/v1/custom-fields/{definition_id}").status_code == 404
    assert globex.admin.patch(f"/api/v1/custom-fields/{definition_id}", json={"label": "x"}).status_code == 404
    keys = {(d["entity"], d["key"], d["type"]) for d in globex.member.get("/api/v1/custom-fields").json()["items"]}
    assert keys == {("account", "budget", "select")}
    ok = globex.admin.post("/api/v1/accounts", json={"name": "G", "custom_fields": {"budget": "low"}})
    assert ok.status_code == 201, ok.text
    refused = globex.admin.post("/api/v1/accounts", json={"name": "G", "custom_fields": {"budget": 10}})
    assert refused.status_code == 400 and problem_fields(refused) == {"custom_fields.budget"}
    acme_account = acme.admin.post("/api/v1/accounts", json={"name": "A", "custom_fields": {"budget": 10}})
    assert acme_account.status_code == 201, acme_account.text
    found = globex.admin.get("/api/v1/accounts", params={"custom_filter": "budget=low"}).json()["items"]
    assert [a["name"] for a in found] == ["G"]
