"""The 360° timeline end to end, through the gateway as a user would: a contact, an opportunity moved
along the pipeline (sales events), a ticket (servicedesk events) and a call logged over REST all show on
GET /api/v1/contacts/{id}/timeline, newest first, filterable and paginated; another tenant sees nothing."""

from __future__ import annotations

import uuid
from typing import Any

from tests.platform_harness import Platform, Tenant, eventually


def _timeline(platform: Platform, tenant: Tenant, contact_id: str, **params: Any) -> Any:
    with platform.http(tenant) as http:
        return http.get(f"/api/v1/contacts/{contact_id}/timeline", params=params)


def test_timeline_shows_everything_newest_first(platform: Platform, tenant_a: Tenant, tenant_b: Tenant) -> None:
    with platform.http(tenant_a) as http:
        r = http.post("/api/v1/contacts", json={"first_name": "芳", "last_name": "王", "email": "wang.fang@example.cn"})
        assert r.status_code == 201, r.text
        contact = r.json()
        r = http.post(
            "/api/v1/opportunities",
            json={"contact_id": contact["id"], "name": "年度续约", "amount": "88000", "currency": "CNY"},
        )
        assert r.status_code == 201, r.text
        opp = r.json()
        r = http.patch(f"/api/v1/opportunities/{opp['id']}", json={"stage": "proposal"})
        assert r.status_code == 200, r.text
        r = http.post("/api/v1/tickets", json={"contact_id": contact["id"], "subject": "发票抬头错误"})
        assert r.status_code == 201, r.text
        ticket = r.json()
        r = http.post(
            f"/api/v1/contacts/{contact['id']}/interactions",
            json={
                "kind": "call",
                "direction": "outbound",
                "duration_seconds": 300,
                "subject": "跟进报价",
                "body": "客户同意下周签约。",
            },
        )
        assert r.status_code == 201, r.text
        call = r.json()
        assert (call["kind"], call["contact_id"], call["source"], call["version"]) == (
            "call",
            contact["id"],
            "customer",
            1,
        )
        assert r.headers["ETag"] == '"1"'

    def complete() -> list[dict[str, Any]]:
        r = _timeline(platform, tenant_a, contact["id"])
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items if len(items) >= 4 else []

    items = eventually(complete, timeout=60)
    body = _timeline(platform, tenant_a, contact["id"]).json()
    assert set(body) == {"items", "next_page_token"} and body["next_page_token"] == ""
    items = body["items"]
    assert [(i["kind"], i["details"].get("action", "")) for i in items] == [
        ("call", ""),
        ("ticket", "created"),
        ("opportunity", "stage_changed"),
        ("opportunity", "created"),
    ]
    times = [i["occurred_at"] for i in items]
    assert times == sorted(times, reverse=True)
    assert items[0]["id"] == call["id"] and items[0]["body"] == "客户同意下周签约。"
    assert items[1]["subject"] == "Ticket “发票抬头错误” opened (normal priority)"
    assert items[1]["reference_id"] == ticket["id"] and items[1]["source"] == "servicedesk"
    assert items[2]["subject"] == "Opportunity “年度续约” moved from qualification to proposal"
    assert items[3]["details"]["amount"] == "88000.00" and items[3]["details"]["currency"] == "CNY"

    # Filters and pagination over REST.
    r = _timeline(platform, tenant_a, contact["id"], kind=["call", "ticket"])
    assert [i["kind"] for i in r.json()["items"]] == ["call", "ticket"]
    first = _timeline(platform, tenant_a, contact["id"], page_size=3).json()
    assert len(first["items"]) == 3 and first["next_page_token"]
    rest = _timeline(platform, tenant_a, contact["id"], page_size=3, page_token=first["next_page_token"]).json()
    assert [i["id"] for i in first["items"] + rest["items"]] == [i["id"] for i in items]
    r = _timeline(platform, tenant_a, contact["id"], until=items[1]["occurred_at"])
    assert [i["id"] for i in r.json()["items"]] == [items[2]["id"], items[3]["id"]]
    r = _timeline(platform, tenant_a, contact["id"], kind="fax", since="soon")
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/problem+json")
    assert {e["field"] for e in r.json()["errors"]} == {"kind", "since"}
    r = _timeline(platform, tenant_a, contact["id"], sort="newest")
    assert r.status_code == 400 and [e["field"] for e in r.json()["errors"]] == ["sort"]

    with platform.http(tenant_a) as http:
        # Bad input names the fields; an unknown contact is 404.
        r = http.post(f"/api/v1/contacts/{contact['id']}/interactions", json={"kind": "call", "duration_seconds": -5})
        assert r.status_code == 400, r.text
        assert {e["field"] for e in r.json()["errors"]} == {"direction", "duration_seconds"}
        r = http.post(f"/api/v1/contacts/{uuid.uuid4()}/interactions", json={"kind": "note", "body": "x"})
        assert r.status_code == 404, r.text
        # Recorded entries are edited and deleted as the interactions resource; learned ones are read-only.
        r = http.patch(f"/api/v1/interactions/{call['id']}", json={"subject": "已报价"}, headers={"If-Match": '"1"'})
        assert r.status_code == 200, r.text
        assert (r.json()["subject"], r.json()["body"], r.json()["version"]) == ("已报价", "客户同意下周签约。", 2)
        r = http.patch(f"/api/v1/interactions/{call['id']}", json={"subject": "late"}, headers={"If-Match": '"1"'})
        assert r.status_code == 409, r.text
        r = http.patch(f"/api/v1/interactions/{items[2]['id']}", json={"subject": "rewritten"})
        assert r.status_code == 409 and r.json()["type"].endswith("failed-precondition"), r.text
        r = http.delete(f"/api/v1/interactions/{items[3]['id']}")
        assert r.status_code == 409, r.text

    # Another tenant: nothing of tenant A, whichever path it takes.
    with platform.http(tenant_b) as http:
        assert http.get(f"/api/v1/contacts/{contact['id']}/timeline").status_code == 404
        assert http.get(f"/api/v1/interactions/{call['id']}").status_code == 404
        assert http.patch(f"/api/v1/interactions/{call['id']}", json={"subject": "x"}).status_code == 404
        assert http.delete(f"/api/v1/interactions/{call['id']}").status_code == 404
        r = http.post(f"/api/v1/contacts/{contact['id']}/interactions", json={"kind": "note", "body": "x"})
        assert r.status_code == 404
        r = http.get("/api/v1/interactions", params={"contact_id": contact["id"]})
        assert r.status_code == 404

    with platform.http(tenant_a) as http:
        r = http.delete(f"/api/v1/interactions/{call['id']}")
        assert r.status_code == 204, r.text
    remaining = _timeline(platform, tenant_a, contact["id"]).json()["items"]
    assert [i["id"] for i in remaining] == [i["id"] for i in items[1:]]
