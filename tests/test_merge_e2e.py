"""Duplicates and merges end to end, through the gateway as a user would: a duplicate is flagged on create
and by GET /contacts/{id}/duplicates, a merge moves its timeline, its opportunity (sales) and its ticket
(servicedesk) to the survivor, an unmerge moves them back, the tenant-wide dedupe job runs over REST, and
another tenant can touch none of it."""

from __future__ import annotations

from typing import Any

from tests.platform_harness import Platform, Tenant, eventually


def _get(platform: Platform, tenant: Tenant, path: str, **params: Any) -> Any:
    with platform.http(tenant) as http:
        return http.get(path, params=params)


def test_merge_repoints_other_services_and_unmerge_restores(
    platform: Platform, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    with platform.http(tenant_a) as http:
        r = http.post("/api/v1/contacts", json={"first_name": "伟", "last_name": "张", "email": "zhang.wei@acme.cn"})
        assert r.status_code == 201, r.text
        survivor = r.json()
        assert survivor["duplicate_candidates"] == []
        r = http.post(
            "/api/v1/contacts",
            json={"last_name": "张 伟", "email": "Zhang.Wei@acme.cn", "phone": "+86 139 0000 0001", "job_title": "CTO"},
        )
        assert r.status_code == 201, r.text
        duplicate = r.json()
        [candidate] = duplicate["duplicate_candidates"]
        assert candidate["contact_id"] == survivor["id"] and candidate["score"] == 100
        assert [x["rule"] for x in candidate["reasons"]] == ["email", "name"]
        r = http.get(f"/api/v1/contacts/{survivor['id']}/duplicates")
        assert r.status_code == 200, r.text
        assert [(i["contact_id"], i["score"]) for i in r.json()["items"]] == [(duplicate["id"], 100)]

        r = http.post("/api/v1/opportunities", json={"contact_id": duplicate["id"], "name": "续约", "amount": "100"})
        assert r.status_code == 201, r.text
        opp = r.json()
        r = http.post("/api/v1/tickets", json={"contact_id": duplicate["id"], "subject": "发票"})
        assert r.status_code == 201, r.text
        ticket = r.json()

    def learned() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = _get(platform, tenant_a, f"/api/v1/contacts/{duplicate['id']}/timeline").json()[
            "items"
        ]
        return items if {i["kind"] for i in items} >= {"opportunity", "ticket"} else []

    eventually(learned, timeout=60)

    with platform.http(tenant_a) as http:
        # Bad merges name the field; another tenant cannot merge or even see the contacts.
        r = http.post(f"/api/v1/contacts/{survivor['id']}/merge", json={"duplicate_id": survivor["id"]})
        assert r.status_code == 400 and [e["field"] for e in r.json()["errors"]] == ["duplicate_id"], r.text
        r = http.post(
            f"/api/v1/contacts/{survivor['id']}/merge",
            json={"duplicate_id": duplicate["id"], "field_choices": {"job_title": "whichever"}},
        )
        assert r.status_code == 400 and [e["field"] for e in r.json()["errors"]] == ["field_choices.job_title"]
    with platform.http(tenant_b) as http:
        r = http.post(f"/api/v1/contacts/{survivor['id']}/merge", json={"duplicate_id": duplicate["id"]})
        assert r.status_code == 404, r.text
        assert http.get(f"/api/v1/contacts/{survivor['id']}/duplicates").status_code == 404
        r = http.post("/api/v1/contacts", json={"first_name": "伟", "last_name": "张", "email": "zhang.wei@acme.cn"})
        assert r.status_code == 201 and r.json()["duplicate_candidates"] == []
        foreign = r.json()
    with platform.http(tenant_a) as http:
        r = http.post(f"/api/v1/contacts/{survivor['id']}/merge", json={"duplicate_id": foreign["id"]})
        assert r.status_code == 400 and [e["field"] for e in r.json()["errors"]] == ["duplicate_id"], r.text

        r = http.post(
            f"/api/v1/contacts/{survivor['id']}/merge",
            json={"duplicate_id": duplicate["id"], "field_choices": {"last_name": "survivor"}},
        )
        assert r.status_code == 200, r.text
        merge = r.json()
        assert merge["survivor"]["job_title"] == "CTO" and merge["survivor"]["phone"] == "+8613900000001"
        assert merge["moved"]["interactions"] >= 2
        assert http.get(f"/api/v1/contacts/{duplicate['id']}").status_code == 404
        r = http.post(f"/api/v1/contacts/{survivor['id']}/merge", json={"duplicate_id": duplicate["id"]})
        assert r.status_code in (400, 409) and [e["field"] for e in r.json()["errors"]] == ["duplicate_id"]
        r = http.get(f"/api/v1/contacts/{survivor['id']}/merges")
        assert [m["id"] for m in r.json()["items"]] == [merge["id"]]

    def repointed(contact_id: str, name: str) -> bool:
        o = _get(platform, tenant_a, f"/api/v1/opportunities/{opp['id']}").json()
        t = _get(platform, tenant_a, f"/api/v1/tickets/{ticket['id']}").json()
        return o["contact_id"] == contact_id and o.get("contact_name", name) == name and t["contact_id"] == contact_id

    eventually(lambda: repointed(survivor["id"], "张伟"), timeout=60)
    kinds = {i["kind"] for i in _get(platform, tenant_a, f"/api/v1/contacts/{survivor['id']}/timeline").json()["items"]}
    assert kinds >= {"opportunity", "ticket"}

    with platform.http(tenant_b) as http:
        assert http.post(f"/api/v1/contact-merges/{merge['id']}/unmerge", json={}).status_code == 404
    with platform.http(tenant_a) as http:
        r = http.post(f"/api/v1/contact-merges/{merge['id']}/unmerge", json={})
        assert r.status_code == 200, r.text
        assert r.json()["duplicate"]["id"] == duplicate["id"]
        back = http.get(f"/api/v1/contacts/{duplicate['id']}")
        assert back.status_code == 200 and back.json()["job_title"] == "CTO"
        s = http.get(f"/api/v1/contacts/{survivor['id']}").json()
        assert (s["job_title"], s["phone"]) == ("", "")
        r = http.post(f"/api/v1/contact-merges/{merge['id']}/unmerge", json={})
        assert r.status_code == 409 and r.json()["errors"][0]["field"] == "merge_id"
    eventually(lambda: repointed(duplicate["id"], "张 伟"), timeout=60)


def test_dedupe_job_over_rest(platform: Platform, tenant_a: Tenant, tenant_b: Tenant) -> None:
    with platform.http(tenant_a) as http:
        for email in ("li.na@acme.cn", "LI.NA@acme.cn"):
            r = http.post("/api/v1/contacts", json={"first_name": "娜", "last_name": "李", "email": email})
            assert r.status_code == 201, r.text
        r = http.post("/api/v1/dedupe-jobs", json={"min_score": 300})
        assert r.status_code == 400 and [e["field"] for e in r.json()["errors"]] == ["min_score"]
        r = http.post("/api/v1/dedupe-jobs", json={"min_score": 70})
        assert r.status_code == 202, r.text
        job = r.json()

    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = _get(platform, tenant_a, f"/api/v1/dedupe-jobs/{job['id']}").json()
        return body if body["status"] in ("succeeded", "failed") else None

    done = eventually(finished, timeout=60)
    assert done["status"] == "succeeded" and done["progress_percent"] == 100 and done["pairs_found"] >= 1
    r = _get(platform, tenant_a, f"/api/v1/dedupe-jobs/{job['id']}/pairs", min_score=100)
    assert r.status_code == 200, r.text
    names = {(p["first"]["display_name"], p["second"]["display_name"]) for p in r.json()["items"]}
    assert ("李娜", "李娜") in names
    assert _get(platform, tenant_b, f"/api/v1/dedupe-jobs/{job['id']}").status_code == 404
    assert _get(platform, tenant_b, f"/api/v1/dedupe-jobs/{job['id']}/pairs").status_code == 404
