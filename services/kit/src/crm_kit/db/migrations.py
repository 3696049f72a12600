"""Alembic, driven programmatically: each service keeps its revisions in `<package>/migrations/versions`
and a one-line env.py that calls `run_env`. Helpers here create the kit's tables and row-level security."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from alembic import command, context
from alembic.config import Config
from alembic.operations import Operations
from sqlalchemy.engine import Connection

from crm_kit.db.engine import async_url, create_engine

RLS_POLICY = "tenant_isolation"
# Tables the application role may read and append to, never change: grant_app_role re-revokes UPDATE and
# DELETE on them after its blanket grant.
APPEND_ONLY_TABLES = ("audit_log",)
AUDIT_REDACT_SIGNATURE = "audit_log_redact(text, text, text[])"
ANALYZE_SIGNATURE = "crm_analyze(text)"
# SECURITY DEFINER functions of the public schema named crm_* are entry points made for the application
# role, each able to do one narrow thing (crm_analyze, a service's own such as customer's
# crm_purge_merge_snapshots): grant_app_role grants EXECUTE on them.
APP_FUNCTION_PREFIX = "crm_"


def alembic_config(migrations_dir: Path, url: str, app_role: str = "") -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["url"] = async_url(url)
    cfg.attributes["app_role"] = app_role
    return cfg


def upgrade(migrations_dir: Path, url: str, app_role: str = "", revision: str = "heads") -> None:
    """Upgrade to every head: features may add independent revision branches off the same base."""
    command.upgrade(alembic_config(migrations_dir, url, app_role), revision)


def run_env() -> None:
    """Body of every service's migrations/env.py (online mode, async engine)."""
    cfg = context.config
    url: str = cfg.attributes["url"]
    app_role: str = cfg.attributes.get("app_role", "")

    def do_run(connection: Connection) -> None:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        if connection.dialect.name == "postgresql" and app_role:
            grant_app_role(connection, app_role)
        connection.commit()

    async def run() -> None:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(do_run)
        finally:
            await engine.dispose()

    asyncio.run(run())


def grant_app_role(connection: Connection, role: str) -> None:
    """The application role may read and write rows but owns nothing, so RLS binds it."""
    exists = connection.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar()
    if not exists:
        return
    quoted = connection.dialect.identifier_preparer.quote(role)
    connection.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {quoted}"))
    connection.execute(
        sa.text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted}")
    )
    connection.execute(sa.text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {quoted}"))
    for table in APPEND_ONLY_TABLES:
        if connection.execute(sa.text("SELECT to_regclass(:t)"), {"t": f"public.{table}"}).scalar() is not None:
            connection.execute(sa.text(f'REVOKE UPDATE, DELETE, TRUNCATE ON "{table}" FROM {quoted}'))
    redact = connection.execute(
        sa.text("SELECT to_regprocedure(:f)"), {"f": f"public.{AUDIT_REDACT_SIGNATURE}"}
    ).scalar()
    if redact is not None:
        connection.execute(sa.text(f"GRANT EXECUTE ON FUNCTION public.{AUDIT_REDACT_SIGNATURE} TO {quoted}"))
    entry_points = connection.execute(
        sa.text(
            "SELECT format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)) "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public' AND p.prosecdef AND starts_with(p.proname, :prefix)"
        ),
        {"prefix": APP_FUNCTION_PREFIX},
    ).scalars()
    for signature in list(entry_points):
        connection.execute(sa.text(f"GRANT EXECUTE ON FUNCTION {signature} TO {quoted}"))


def grant_app_function(op: Operations, signature: str) -> None:
    """PostgreSQL, in a migration creating the function `signature` (a SECURITY DEFINER entry point for the
    application role, named crm_*): nobody but the owner may call it, except the configured app role."""
    op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
    app_role = _configured_app_role()
    if app_role:
        exists = op.get_bind().execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": app_role})
        if exists.scalar():
            quoted = op.get_bind().dialect.identifier_preparer.quote(app_role)
            op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {quoted}")


def create_analyze_function(op: Operations) -> None:
    """PostgreSQL: `crm_analyze(table)`, which refreshes a table's planner statistics for the application
    role (only an owner may ANALYZE; `Database.analyze` calls it after a bulk change, before autovacuum
    would). It can do nothing else: ANALYZE of one table of the public schema."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION crm_analyze(p_table text)
        RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
        BEGIN
            IF to_regclass(format('public.%I', p_table)) IS NULL THEN
                RAISE EXCEPTION 'no table %', p_table;
            END IF;
            EXECUTE format('ANALYZE public.%I', p_table);
        END
        $$
        """
    )
    grant_app_function(op, ANALYZE_SIGNATURE)


def resource_columns() -> list[sa.Column[object]]:
    """Columns of a `crm_kit.db.Resource` table, as of kit schema 1."""
    return [
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    ]


def create_system_tables(op: Operations) -> None:
    """Create the outbox, inbox and dead-letter tables, as of kit schema 1 (call from a service's first
    revision). Written out, not taken from the models, so that old revisions never change meaning."""
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "outbox",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("traceparent", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", ts, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("sent_at", ts, nullable=True),
        sa.Column("last_error", sa.Text, nullable=False),
    )
    op.create_index("ix_outbox_status_next_attempt_at", "outbox", ["status", "next_attempt_at"])
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(128), primary_key=True),
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("processed_at", ts, nullable=False),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("consumer", sa.String(128), nullable=False),
        sa.Column("stream_sequence", sa.Integer, nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("deliveries", sa.Integer, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("replayed_at", ts, nullable=True),
    )
    op.create_index("ix_dead_letters_consumer", "dead_letters", ["consumer"])
    for table in ("outbox", "inbox", "dead_letters"):
        enable_tenant_rls(op, table, system_access=True)


def enable_tenant_rls(op: Operations, table: str, *, system_access: bool = False) -> None:
    """ENABLE + FORCE row-level security with a fail-closed tenant policy (PostgreSQL only).

    `system_access` is for the kit's own tables: the relay and the dead-letter store run in
    `crm_kit.context.system_scope()`, which sets app.system for their transactions.
    """
    if op.get_bind().dialect.name != "postgresql":
        return
    condition = "tenant_id = current_setting('app.tenant_id', true)"
    if system_access:
        condition = f"({condition} OR current_setting('app.system', true) = 'on')"
    op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
    op.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')
    op.execute(f'CREATE POLICY {RLS_POLICY} ON "{table}" USING ({condition}) WITH CHECK ({condition})')


def create_audit_table(op: Operations) -> None:
    """Create the append-only `audit_log` (see `crm_kit.audit`) with row-level security, as of kit audit
    schema 1 (call from one revision per service). Written out, not taken from the model, so that old
    revisions never change meaning.

    Append-only: on PostgreSQL nobody but the owner may UPDATE, DELETE or TRUNCATE it (the application role
    gets SELECT and INSERT; `grant_app_role` keeps it so), and the one change allowed, blanking personal
    data for erasure, goes through the SECURITY DEFINER function `audit_log_redact`, which can do nothing
    else. On SQLite, triggers refuse deletes and updates of anything but `before`/`after`.
    """
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "audit_log",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column("time", ts, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("actor_roles", sa.JSON, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("entity_id", sa.String(64), nullable=False),
        sa.Column("before", sa.JSON, nullable=True),
        sa.Column("after", sa.JSON, nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=False),
    )
    op.create_index(
        "ix_audit_log_tenant_id_entity_entity_id_id", "audit_log", ["tenant_id", "entity", "entity_id", "id"]
    )
    op.create_index("ix_audit_log_tenant_id_actor_id", "audit_log", ["tenant_id", "actor", "id"])
    op.create_index("ix_audit_log_tenant_id_time", "audit_log", ["tenant_id", "time"])
    enable_tenant_rls(op, "audit_log")
    if op.get_bind().dialect.name == "postgresql":
        _audit_postgres(op)
    else:
        _audit_sqlite(op)


_REDACT_JSON = """CASE WHEN {col} IS NULL OR json_typeof({col}) <> 'object' THEN {col} ELSE (
        SELECT COALESCE(json_object_agg(e.key, CASE WHEN p_fields IS NULL OR e.key = ANY(p_fields)
                                                    THEN to_json('[erased]'::text) ELSE e.value END),
                        '{{}}'::json)
        FROM json_each({col}) AS e) END"""


def _audit_postgres(op: Operations) -> None:
    op.execute('REVOKE UPDATE, DELETE, TRUNCATE ON "audit_log" FROM PUBLIC')
    app_role = _configured_app_role()
    if app_role:
        exists = op.get_bind().execute(
            sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": app_role}
        ).scalar()
        if exists:
            quoted = op.get_bind().dialect.identifier_preparer.quote(app_role)
            op.execute(f'REVOKE UPDATE, DELETE, TRUNCATE ON "audit_log" FROM {quoted}')
    op.execute(
        f"""
        CREATE FUNCTION audit_log_redact(p_entity text, p_entity_id text, p_fields text[])
        RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
        DECLARE
            touched integer;
        BEGIN
            UPDATE audit_log
               SET before = {_REDACT_JSON.format(col="audit_log.before")},
                   after = {_REDACT_JSON.format(col="audit_log.after")}
             WHERE tenant_id = current_setting('app.tenant_id', true)
               AND entity = p_entity AND entity_id = p_entity_id;
            GET DIAGNOSTICS touched = ROW_COUNT;
            RETURN touched;
        END
        $$
        """
    )
    op.execute(f"REVOKE ALL ON FUNCTION {AUDIT_REDACT_SIGNATURE} FROM PUBLIC")


def _configured_app_role() -> str:
    """The app role `upgrade` was given; "" outside an Alembic environment (a test building a schema by
    hand calls `grant_app_role` itself)."""
    try:
        return str(context.config.attributes.get("app_role", "") or "")
    except (AttributeError, NameError):  # alembic.context has no config outside env.py
        return ""


def _audit_sqlite(op: Operations) -> None:
    refuse = "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
    op.execute(f"CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log {refuse}")
    op.execute(
        "CREATE TRIGGER audit_log_no_update BEFORE UPDATE OF "
        f"id, tenant_id, time, actor, actor_roles, action, entity, entity_id, trace_id ON audit_log {refuse}"
    )


def drop_audit_table(op: Operations) -> None:
    """The downgrade of `create_audit_table`."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {AUDIT_REDACT_SIGNATURE}")
    op.drop_table("audit_log")
