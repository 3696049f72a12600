"""Contact import and export end to end through the gateway, as a user would: upload a CSV to
POST /api/v1/contact-imports (dry run, then for real), follow GET /api/v1/contact-imports/{id}, download the
problem report, export the filtered list from GET /api/v1/contacts/export (not captured by /contacts/{id})
and re-import it with zero changes; another tenant sees none of it."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx

from tests.platform_harness import Platform, Tenant, eventually

CSV_TEXT = (
    "external_id,first_name,last_name,email,phone,tags\n"
    "e2e-1,伟,张,zhang.wei@example.cn,13800138000,vip;展会\n"
    "e2e-2,Ada,Lovelace,ADA@example.com,,vip\n"
    "e2e-3,,,bad-email,,\n"
)


def _finished(http: httpx.Client, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        r = http.get(f"/api/v1/contact-imports/{job_id}")
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        return job if job["status"] not in ("queued", "running") else None

    result: dict[str, Any] = eventually(done, timeout=60)
    return result


def test_import_and_export_through_the_gateway(platform: Platform, tenant_a: Tenant, tenant_b: Tenant) -> None:
    with platform.http(tenant_a) as http:
        r = http.post(
            "/api/v1/contact-imports",
            params={"dry_run": "true"},
            files={"file": ("contacts.csv", CSV_TEXT.encode("utf-8"), "text/csv")},
        )
        assert r.status_code == 202, r.text
        assert r.json()["dry_run"] is True and r.json()["filename"] == "contacts.csv"
        dry = _finished(http, r.json()["id"])
        assert (dry["status"], dry["created"], dry["failed"]) == ("completed_with_errors", 2, 1)
        assert {(p["row"], p["field"]) for p in dry["problems"]} == {(4, "email"), (4, "last_name")}
        listed = http.get(f"/api/v1/contact-imports/{dry['id']}/problems", params={"page_size": 1}).json()
        assert [(p["row"], p["field"]) for p in listed["items"]] == [(4, "email")] and listed["next_page_token"]
        report = http.get(f"/api/v1/contact-imports/{dry['id']}/report")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/csv")
        assert "attachment" in report.headers["content-disposition"] and "bad-email" in report.text
        assert http.get("/api/v1/contacts", params={"q": "lovelace"}).json()["items"] == []

        # The raw body works as well as multipart; the format comes from ?format=.
        r = http.post("/api/v1/contact-imports", params={"format": "csv"}, content=CSV_TEXT.encode("utf-8"))
        assert r.status_code == 202, r.text
        job = _finished(http, r.json()["id"])
        assert (job["status"], job["created"], job["failed"]) == ("completed_with_errors", 2, 1)

        r = http.get("/api/v1/contacts/export", params={"tag": "展会", "format": "csv"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv") and "attachment" in r.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
        assert [(row["external_id"], row["email"]) for row in rows] == [("e2e-1", "zhang.wei@example.cn")]
        xlsx = http.get("/api/v1/contacts/export", params={"format": "xlsx"})
        assert xlsx.status_code == 200 and xlsx.content.startswith(b"PK")
        bad = http.get("/api/v1/contacts/export", params={"format": "pdf"})
        assert bad.status_code == 400 and "format" in bad.text

        again = http.post("/api/v1/contact-imports", files={"file": ("export.xlsx", xlsx.content)})
        assert again.status_code == 202, again.text
        round_trip = _finished(http, again.json()["id"])
        assert (round_trip["status"], round_trip["created"], round_trip["updated"], round_trip["unchanged"]) == (
            "succeeded",
            0,
            0,
            2,
        )
        job_id = job["id"]

    with platform.http(tenant_b) as http:
        assert http.get(f"/api/v1/contact-imports/{job_id}").status_code == 404
        r = http.get("/api/v1/contacts/export")
        assert r.status_code == 200 and "e2e-1" not in r.content.decode("utf-8-sig")
        empty = http.post("/api/v1/contact-imports", content=b"")
        assert empty.status_code == 400
