"""Record-level access and the audit log end to end, through the gateway as users would: an admin creates
a sales rep (member) and a manager with the users API, each logs in, and the services themselves decide
what each may see and change; the audit trail is readable by admins and managers only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.platform_harness import PASSWORD, Platform, Tenant, eventually


@dataclass
class User:
    id: str
    login: Tenant


def new_user(platform: Platform, admin: Tenant, email: str, role: str) -> User:
    with platform.http(admin) as api:
        r = api.post("/api/v1/users", json={"email": email, "password": PASSWORD, "roles": [role]})
    assert r.status_code == 201, r.text
    login = Tenant(slug=admin.slug, email=email)
    platform.login(login)
    return User(r.json()["id"], login)


@pytest.fixture(scope="module")
def rep(platform: Platform, tenant_a: Tenant) -> User:
    return new_user(platform, tenant_a, f"rep@{tenant_a.slug}.example.com", "member")


@pytest.fixture(scope="module")
def rep2(platform: Platform, tenant_a: Tenant) -> User:
    return new_user(platform, tenant_a, f"rep2@{tenant_a.slug}.example.com", "member")


@pytest.fixture(scope="module")
def boss(platform: Platform, tenant_a: Tenant) -> User:
    return new_user(platform, tenant_a, f"boss@{tenant_a.slug}.example.com", "manager")


def ids(api: httpx.Client, path: str, **params: Any) -> set[str]:
    r = api.get(path, params={"page_size": 500, **params})
    assert r.status_code == 200, r.text
    return {item["id"] for item in r.json()["items"]}


def problem_fields(r: httpx.Response) -> set[str]:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    return {e["field"] for e in r.json().get("errors", [])}


def test_a_rep_sees_and_edits_only_their_own_contacts(
    platform: Platform, tenant_a: Tenant, rep: User, rep2: User, boss: User
) -> None:
    with platform.http(rep.login) as api:
        r = api.post("/api/v1/contacts", json={"first_name": "Ravi", "last_name": "Rep"})
        assert r.status_code == 201, r.text
        mine = r.json()
    assert mine["owner_id"] == rep.id
    with platform.http(tenant_a) as admin:
        theirs = admin.post("/api/v1/contacts", json={"first_name": "Ada", "last_name": "Admin"}).json()
        everything = ids(admin, "/api/v1/contacts")
    assert {mine["id"], theirs["id"]} <= everything

    with platform.http(rep.login) as api:
        assert ids(api, "/api/v1/contacts") == {mine["id"]}
        assert ids(api, "/api/v1/contacts", owner_id=theirs["owner_id"]) == set()
        for r in (
            api.get(f"/api/v1/contacts/{theirs['id']}"),
            api.patch(f"/api/v1/contacts/{theirs['id']}", json={"first_name": "Hijacked"}),
            api.delete(f"/api/v1/contacts/{theirs['id']}"),
        ):
            assert r.status_code == 404, r.text
            assert r.json()["type"].endswith("not-found")
        r = api.post("/api/v1/contacts", json={"first_name": "For", "last_name": "Boss", "owner_id": boss.id})
        assert r.status_code == 403, r.text
        assert problem_fields(r) == {"owner_id"}
        r = api.patch(f"/api/v1/contacts/{mine['id']}", json={"owner_id": rep2.id})
        assert r.status_code == 403 and problem_fields(r) == {"owner_id"}, r.text
        r = api.patch(f"/api/v1/contacts/{mine['id']}", json={"last_name": "Rep-Renamed"})
        assert r.status_code == 200 and r.json()["last_name"] == "Rep-Renamed"

    with platform.http(boss.login) as api:
        assert {mine["id"], theirs["id"]} <= ids(api, "/api/v1/contacts")
        assert api.get(f"/api/v1/contacts/{mine['id']}").status_code == 200
        r = api.patch(f"/api/v1/contacts/{mine['id']}", json={"owner_id": rep2.id})
        assert r.status_code == 200 and r.json()["owner_id"] == rep2.id
    with platform.http(rep.login) as api:
        assert ids(api, "/api/v1/contacts") == set()
        assert api.get(f"/api/v1/contacts/{mine['id']}").status_code == 404
    with platform.http(rep2.login) as api:
        assert ids(api, "/api/v1/contacts") == {mine["id"]}


def test_a_rep_sees_only_their_own_opportunities_and_links_only_their_own_contacts(
    platform: Platform, tenant_a: Tenant, rep: User, boss: User
) -> None:
    with platform.http(rep.login) as api:
        own_contact = api.post("/api/v1/contacts", json={"first_name": "Olga", "last_name": "Own"}).json()
    with platform.http(tenant_a) as admin:
        other_contact = admin.post("/api/v1/contacts", json={"first_name": "Otto", "last_name": "Other"}).json()
        other_opp = admin.post(
            "/api/v1/opportunities", json={"name": "Admin's deal", "amount": "5", "contact_id": other_contact["id"]}
        ).json()

    with platform.http(rep.login) as api:
        r = api.post(
            "/api/v1/opportunities", json={"name": "Rep's deal", "amount": "10", "contact_id": own_contact["id"]}
        )
        assert r.status_code == 201, r.text
        mine = r.json()
        assert (mine["owner_id"], mine["contact_name"]) == (rep.id, "Olga Own")
        r = api.post("/api/v1/opportunities", json={"name": "Poach", "amount": "10", "contact_id": other_contact["id"]})
        assert r.status_code == 400 and problem_fields(r) == {"contact_id"}, r.text
        r = api.post("/api/v1/tickets", json={"subject": "Help", "contact_id": other_contact["id"]})
        assert r.status_code == 400 and problem_fields(r) == {"contact_id"}, r.text
        assert api.post("/api/v1/tickets", json={"subject": "Help", "contact_id": own_contact["id"]}).status_code == 201

        assert ids(api, "/api/v1/opportunities") == {mine["id"]}
        assert api.get(f"/api/v1/opportunities/{other_opp['id']}").status_code == 404
        assert api.patch(f"/api/v1/opportunities/{other_opp['id']}", json={"name": "x"}).status_code == 404
        assert api.delete(f"/api/v1/opportunities/{other_opp['id']}").status_code == 404
    with platform.http(boss.login) as api:
        assert {mine["id"], other_opp["id"]} <= ids(api, "/api/v1/opportunities")


def test_admins_and_managers_read_the_audit_trail(
    platform: Platform, tenant_a: Tenant, tenant_b: Tenant, rep: User, boss: User
) -> None:
    with platform.http(rep.login) as api:
        contact = api.post("/api/v1/contacts", json={"first_name": "Audrey", "last_name": "Trail"}).json()
        r = api.patch(f"/api/v1/contacts/{contact['id']}", json={"first_name": "Audra"})
        assert r.status_code == 200, r.text
        opp = api.post("/api/v1/opportunities", json={"name": "Audited deal", "amount": "1"}).json()

        r = api.get(f"/api/v1/contacts/{contact['id']}/audit")
        assert r.status_code == 403 and r.json()["type"].endswith("forbidden"), r.text
        assert api.get("/api/v1/audit/customer").status_code == 403

    for reader in (tenant_a, boss.login):
        with platform.http(reader) as api:
            r = api.get(f"/api/v1/contacts/{contact['id']}/audit")
            assert r.status_code == 200, r.text
            entries = r.json()["items"]
            assert [e["action"] for e in entries] == ["update", "create"]
            update, create = entries
            assert {e["actor"] for e in entries} == {rep.id} and update["actor_roles"] == ["member"]
            assert (update["before"], update["after"]) == ({"first_name": "Audrey"}, {"first_name": "Audra"})
            assert create["after"]["owner_id"] == rep.id and "before" not in create
            assert len(create["trace_id"]) == 32

            r = api.get("/api/v1/audit/sales", params={"entity": "opportunity", "entity_id": opp["id"]})
            assert r.status_code == 200, r.text
            (entry,) = r.json()["items"]
            assert (entry["action"], entry["actor"], entry["after"]["name"]) == ("create", rep.id, "Audited deal")
            assert [e["entity_id"] for e in api.get(f"/api/v1/opportunities/{opp['id']}/audit").json()["items"]] == [
                opp["id"]
            ]

            r = api.get("/api/v1/audit/customer", params={"actor": rep.id, "page_size": 1})
            assert r.status_code == 200 and len(r.json()["items"]) == 1 and r.json()["next_page_token"]
            r = api.get("/api/v1/audit/customer", params={"start_time": "last tuesday", "page_size": "x"})
            assert r.status_code == 400 and problem_fields(r) == {"page_size"}
            r = api.get("/api/v1/audit/customer", params={"start_time": "last tuesday"})
            assert r.status_code == 400 and problem_fields(r) == {"start_time"}
            assert api.get("/api/v1/audit/customer", params={"colour": "red"}).status_code == 400

    with platform.http(tenant_b) as other:  # another tenant's admin sees none of it
        r = other.get(f"/api/v1/contacts/{contact['id']}/audit")
        assert r.status_code == 200 and r.json()["items"] == []
        assert rep.id not in {e["actor"] for e in other.get("/api/v1/audit/customer").json()["items"]}
    with platform.http() as anonymous:
        assert anonymous.get(f"/api/v1/contacts/{contact['id']}/audit").status_code == 401


def test_deletes_are_audited_with_the_whole_record(platform: Platform, tenant_a: Tenant, rep: User) -> None:
    with platform.http(rep.login) as api:
        contact = api.post("/api/v1/contacts", json={"first_name": "Gone", "last_name": "Soon"}).json()
        assert api.delete(f"/api/v1/contacts/{contact['id']}").status_code == 204
    with platform.http(tenant_a) as admin:
        entries = eventually(lambda: admin.get(f"/api/v1/contacts/{contact['id']}/audit").json()["items"] or None)
    assert [e["action"] for e in entries] == ["delete", "create"]
    assert entries[0]["before"]["first_name"] == "Gone" and "after" not in entries[0]
