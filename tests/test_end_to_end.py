"""A user's first session: log in, record a customer, an opportunity, a ticket and a campaign, and see all
four in the analytics summary within seconds."""

from __future__ import annotations

from tests.platform_harness import Platform, Tenant, eventually


def test_created_records_reach_the_analytics_summary(platform: Platform, tenant_a: Tenant) -> None:
    with platform.http(tenant_a) as api:
        contact = api.post(
            "/api/v1/contacts",
            json={"first_name": "伟", "last_name": "张", "email": "Wei.Zhang@Example.COM", "phone": "138 0013 8000"},
        )
        assert contact.status_code == 201, contact.text
        c = contact.json()
        assert c["email"] == "wei.zhang@example.com"
        assert c["phone"] == "+8613800138000"
        assert c["last_name"] == "张"

        opp = api.post(
            "/api/v1/opportunities",
            json={"contact_id": c["id"], "name": "年度合同", "amount": "125000.50", "currency": "CNY"},
        )
        assert opp.status_code == 201, opp.text
        assert opp.json()["stage"] == "qualification"

        ticket = api.post(
            "/api/v1/tickets",
            json={"contact_id": c["id"], "subject": "无法登录", "priority": "high", "channel": "email"},
        )
        assert ticket.status_code == 201, ticket.text

        campaign = api.post(
            "/api/v1/campaigns", json={"name": "双十一", "channel": "email", "budget": "5000", "currency": "CNY"}
        )
        assert campaign.status_code == 201, campaign.text

        def summary_has_all_four() -> dict | None:
            s = api.get("/api/v1/analytics/summary").json()
            ok = (
                s["contact_count"] == 1
                and s["open_opportunity_count"] == 1
                and any(b["key"] == "high" and b["count"] == 1 for b in s["open_tickets_by_priority"])
                and any(b["key"] == "draft" and b["count"] == 1 for b in s["campaigns_by_status"])
            )
            return s if ok else None

        summary = eventually(summary_has_all_four, timeout=15)
        [bucket] = summary["pipeline_by_stage"]
        assert bucket == {"key": "qualification", "currency": "CNY", "count": 1, "amount": "125000.50"}

        # Sales learned the contact's name from customer events, without reading customer's database.
        def named() -> bool:
            return api.get(f"/api/v1/opportunities/{opp.json()['id']}").json()["contact_name"] == "张伟"

        eventually(named)
