"""The gateway on PostgreSQL (psycopg 3): migrations as the owner, the app as a role that owns nothing.

Runs when CRM_TEST_POSTGRES_URL is set (fixtures from crm_kit.testing.plugin)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from crm_gateway import migrations
from crm_gateway.auth import api_clients
from crm_gateway.auth.keys import rotate_keys
from crm_gateway.config import Settings
from crm_gateway.db import Database
from crm_gateway.models import Base
from crm_gateway.tenants import create_tenant

pytestmark = pytest.mark.postgres
PASSWORD = "correct-horse-42"


@pytest.fixture
def pg(postgres_databases: Any) -> Any:
    urls = postgres_databases.create("gateway")
    migrations.upgrade(urls.owner, urls.app_role)
    migrations.upgrade(urls.owner, urls.app_role)  # idempotent
    return urls


def test_schema_matches_models(pg: Any) -> None:
    db = Database(pg.owner)
    try:
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": migrations.VERSION_TABLE})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        db.dispose()


def test_full_auth_flow_as_the_application_role(pg: Any, make_settings: Callable[..., Settings]) -> None:
    from crm_gateway.app import create_app

    app = create_app(make_settings(database_url=pg.app))
    gw = app.extensions["crm_gateway"]
    assert gw.db.dialect == "postgresql"
    client = app.test_client()
    try:
        created = create_tenant(
            gw.db, slug="acme", name="Acme 公司", admin_email="admin@acme.test", admin_password=PASSWORD
        )
        assert client.get("/readyz").status_code == 200
        tokens = client.post(
            "/api/v1/auth/token", json={"tenant": "acme", "email": "admin@acme.test", "password": PASSWORD}
        ).get_json()
        assert tokens["access_token"]
        refresh = tokens["refresh_token"]
        rotated = client.post("/api/v1/auth/token", json={"grant_type": "refresh_token", "refresh_token": refresh})
        assert rotated.status_code == 200
        reused = client.post("/api/v1/auth/token", json={"grant_type": "refresh_token", "refresh_token": refresh})
        assert reused.status_code == 401
        again = client.post(
            "/api/v1/auth/token",
            json={"grant_type": "refresh_token", "refresh_token": rotated.get_json()["refresh_token"]},
        )
        assert again.status_code == 401, "reuse revoked the family"

        new = api_clients.create(
            gw.db,
            gw.pepper,
            tenant_id=created.tenant.id,
            name="erp",
            roles=["member"],
            scopes=["contacts:read"],
            expires_at=None,
        )
        grant = {"grant_type": "client_credentials", "client_id": new.client.client_id, "client_secret": new.secret}
        assert client.post("/api/v1/auth/token", json=grant).status_code == 200

        users = client.get("/api/v1/users", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert users.status_code == 200 and users.get_json()["items"][0]["email"] == "admin@acme.test"
        rotate_keys(gw.db, timedelta(hours=1))
        gw.keys.refresh()
        assert len(client.get("/.well-known/jwks.json").get_json()["keys"]) == 2
    finally:
        gw.close()
