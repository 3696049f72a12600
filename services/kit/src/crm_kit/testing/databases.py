"""Databases for tests: a SQLite file per service by default, and a fresh PostgreSQL database per service
when CRM_TEST_POSTGRES_URL is set. On PostgreSQL, migrations run as the owner and the services connect as
an application role that owns nothing, so row-level security binds them as it does in production."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_ENV = "CRM_TEST_POSTGRES_URL"
REQUIRE_ENV = "CRM_REQUIRE_POSTGRES"
APP_ROLE = "crm_test_app"
APP_PASSWORD = "crm-test-app"


@dataclass(frozen=True)
class DatabaseUrls:
    app: str  # what the service connects with
    owner: str  # what migrations run with
    app_role: str = ""


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


class DatabaseFactory:
    def __init__(self, backend: str, tmp_dir: Path) -> None:
        self.backend = backend
        self.tmp_dir = tmp_dir
        self.run_id = uuid.uuid4().hex[:8]
        self.created: list[str] = []

    def _admin_engine(self):  # type: ignore[no-untyped-def]
        url = make_url(postgres_url() or "").set(drivername="postgresql+psycopg")
        return create_engine(url, isolation_level="AUTOCOMMIT")

    def create(self, name: str) -> DatabaseUrls:
        if self.backend == "sqlite":
            path = self.tmp_dir / f"{name}-{uuid.uuid4().hex[:6]}.db"
            url = f"sqlite+aiosqlite:///{path}"
            return DatabaseUrls(app=url, owner=url)
        base = make_url(postgres_url() or "")
        db_name = f"crmt_{self.run_id}_{name}_{uuid.uuid4().hex[:4]}".lower()
        engine = self._admin_engine()
        with engine.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": APP_ROLE}).scalar()
            if not exists:
                conn.execute(
                    text(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{APP_PASSWORD}' NOSUPERUSER NOBYPASSRLS")
                )
            conn.execute(text(f'CREATE DATABASE "{db_name}"'))
        engine.dispose()
        self.created.append(db_name)
        owner = base.set(drivername="postgresql+asyncpg", database=db_name)
        app = owner.set(username=APP_ROLE, password=APP_PASSWORD)
        return DatabaseUrls(
            app=app.render_as_string(hide_password=False),
            owner=owner.render_as_string(hide_password=False),
            app_role=APP_ROLE,
        )

    def drop_all(self) -> None:
        if self.backend != "postgres" or not self.created:
            return
        engine = self._admin_engine()
        with engine.connect() as conn:
            for db_name in self.created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        engine.dispose()
