"""PostgreSQL row-level security on every tenant table of every service, checked as the application role
with raw SQL (so the ORM's own tenant guard is out of the picture)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from crm_kit.db.migrations import upgrade
from crm_kit.testing.databases import DatabaseFactory
from tests.platform_harness import SPECS

pytestmark = pytest.mark.postgres

A, B = "tenant-a-" + uuid.uuid4().hex[:6], "tenant-b-" + uuid.uuid4().hex[:6]


def _sync(url: str) -> Engine:
    return sa.create_engine(make_url(url).set(drivername="postgresql+psycopg"))


@pytest.fixture(scope="module", params=SPECS, ids=lambda s: s.name)
def app_engine(request: pytest.FixtureRequest, postgres_databases: DatabaseFactory) -> Iterator[Engine]:
    spec = request.param
    urls = postgres_databases.create(f"rls_{spec.name}")
    upgrade(spec.migrations, urls.owner, urls.app_role)
    engine = _sync(urls.app)
    yield engine
    engine.dispose()


def _tenant_tables(conn: Connection) -> list[str]:
    rows = conn.execute(
        sa.text(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND column_name = 'tenant_id' ORDER BY table_name"
        )
    )
    return [r[0] for r in rows]


def _row(conn: Connection, table: str, tenant: str) -> dict[str, Any]:
    """A row with a plausible value for every NOT NULL column, whatever the table."""
    cols = conn.execute(
        sa.text(
            "SELECT column_name, data_type, is_nullable, column_default, character_maximum_length "
            "FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = :t"
        ),
        {"t": table},
    )
    row: dict[str, Any] = {}
    for name, data_type, nullable, default, max_length in cols:
        if name == "tenant_id":
            row[name] = tenant
        elif nullable == "NO" and default is None:
            if "timestamp" in data_type:
                row[name] = sa.func.now()
            elif data_type in ("integer", "bigint", "smallint", "numeric", "double precision"):
                row[name] = 1
            elif data_type == "boolean":
                row[name] = False
            elif data_type in ("json", "jsonb"):
                row[name] = sa.text("'[]'")
            else:
                row[name] = uuid.uuid4().hex[: min(30, max_length or 30)]
    return row


def _set_tenant(conn: Connection, tenant: str) -> None:
    conn.execute(sa.text("SELECT set_config('app.tenant_id', :t, true)"), {"t": tenant})


def _insert(conn: Connection, table: str, tenant: str) -> None:
    meta = sa.MetaData()
    t = sa.Table(table, meta, autoload_with=conn)
    conn.execute(sa.insert(t).values(**_row(conn, table, tenant)))


def test_the_application_role_is_bound_by_rls(app_engine: Engine) -> None:
    with app_engine.connect() as conn:
        role = conn.execute(sa.text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")).one()
        assert role == (False, False)
        owned = conn.execute(
            sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = current_user")
        ).scalar()
        assert owned == 0


def test_every_tenant_table_enables_and_forces_rls(app_engine: Engine) -> None:
    with app_engine.connect() as conn:
        tables = _tenant_tables(conn)
        assert tables, "no tenant tables found"
        flags = conn.execute(
            sa.text(
                "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                "WHERE relname = ANY(:names) AND relkind = 'r'"
            ),
            {"names": tables},
        ).all()
        assert {name: (rls, force) for name, rls, force in flags} == {t: (True, True) for t in tables}


def test_tenants_see_only_their_rows_and_cannot_write_others(app_engine: Engine) -> None:
    with app_engine.connect() as conn:
        tables = _tenant_tables(conn)
    for table in tables:
        with app_engine.begin() as conn:
            _set_tenant(conn, B)
            _insert(conn, table, B)
        with app_engine.begin() as conn:
            _set_tenant(conn, A)
            _insert(conn, table, A)
            assert conn.execute(sa.text(f'SELECT count(*) FROM "{table}" WHERE tenant_id = :b'), {"b": B}).scalar() == 0
            visible = conn.execute(sa.text(f'SELECT DISTINCT tenant_id FROM "{table}"')).scalars().all()
            assert visible == [A], table
            may_update = conn.execute(
                sa.text("SELECT has_table_privilege(current_user, :t, 'UPDATE')"), {"t": f'public."{table}"'}
            ).scalar()
            if may_update:  # append-only tables (audit_log) grant no UPDATE at all
                updated = conn.execute(
                    sa.text(f'UPDATE "{table}" SET tenant_id = tenant_id WHERE tenant_id = :b'), {"b": B}
                )
                assert updated.rowcount == 0
        with app_engine.connect() as conn, conn.begin():
            _set_tenant(conn, A)
            with pytest.raises(sa.exc.ProgrammingError, match="row-level security"):
                _insert(conn, table, B)
        with app_engine.begin() as conn:
            assert conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar() == 0, f"{table} without tenant"
