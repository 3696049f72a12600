"""The real gateway on an HTTP port in front of services a test started, with tenants and their people:
what REST tests of one service need without starting the whole platform (tests/platform_harness.py)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from werkzeug.serving import make_server

from crm_gateway import migrations
from crm_gateway.tenants import create_tenant, create_user

PASSWORD = "correct-horse-42"
ROLES = ("admin", "manager", "member")


@dataclass
class Gateway:
    url: str
    app: Any

    def login(self, slug: str, email: str) -> httpx.Client:
        r = httpx.post(f"{self.url}/api/v1/auth/token", json={"tenant": slug, "email": email, "password": PASSWORD})
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token}"}, timeout=20)


@dataclass
class People:
    """One tenant's admin, manager and member (sales rep), each logged in."""

    admin: httpx.Client
    manager: httpx.Client
    member: httpx.Client


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextmanager
def serve(url: str, env: Mapping[str, str]) -> Iterator[Gateway]:
    """Run the gateway at `url` (http://127.0.0.1:PORT, so services can be started first with its JWKS URL)
    with `env`: GATEWAY_DATABASE_URL, the services (GATEWAY_<NAME>_ADDR) and NATS (CRM_NATS_URL)."""
    database = env["GATEWAY_DATABASE_URL"]
    with _environment(env):
        migrations.upgrade(database)
        from crm_gateway.app import create_app

        app = create_app()
        port = int(url.rsplit(":", 1)[1])
        server = make_server("127.0.0.1", port, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True, name="gateway").start()
        try:
            yield Gateway(url, app)
        finally:
            server.shutdown()


def people(gateway: Gateway, slug: str) -> People:
    """Create tenant `slug` with an admin, a manager and a member, and log each in."""
    db = gateway.app.extensions["crm_gateway"].db
    created = create_tenant(
        db, slug=slug, name=slug, admin_email=f"admin@{slug}.example.com", admin_password=PASSWORD, cell="default"
    )
    for role in ROLES[1:]:
        create_user(
            db, tenant_id=created.tenant.id, email=f"{role}@{slug}.example.com", password=PASSWORD, roles=[role]
        )
    return People(*(gateway.login(slug, f"{role}@{slug}.example.com") for role in ROLES))


def problem_fields(response: httpx.Response) -> set[str]:
    """The fields a problem+json answer names."""
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    return {e["field"] for e in response.json().get("errors", [])}
