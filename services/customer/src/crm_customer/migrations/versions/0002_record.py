"""The complete customer record: new contact and account fields, tags table, field history, tenant settings,
full-text search (SQLite FTS5 trigram / PostgreSQL tsvector + pg_trgm) and the list indexes.

Revision ID: 0002
Revises: 0001
"""

import logging

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from crm_kit.db.migrations import enable_tenant_rls

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
TS = sa.DateTime(timezone=True)
LEAKPROOF = (
    "ALTER FUNCTION pg_catalog.textlike(text, text) LEAKPROOF",
    "ALTER FUNCTION pg_catalog.ts_match_vq(tsvector, tsquery) LEAKPROOF",
)
# The tsvector of a document is its space-separated tokens, taken verbatim (no parser, so CJK text is
# indexed whatever the database's locale).
SEARCH_VECTOR = "array_to_tsvector(array_remove(string_to_array(search_text, ' '), ''))"

CONTACT_COLUMNS = (
    ("gender", sa.String(16), "'unknown'"),
    ("birthday", sa.String(10), "''"),
    ("job_title", sa.String(100), "''"),
    ("department", sa.String(100), "''"),
    ("phones", sa.JSON, "'[]'"),
    ("emails", sa.JSON, "'[]'"),
    ("addresses", sa.JSON, "'[]'"),
    ("social_accounts", sa.JSON, "'[]'"),
    ("preferences", sa.JSON, "'[]'"),
    ("interests", sa.JSON, "'[]'"),
    ("source", sa.String(50), "''"),
    ("classification", sa.String(16), "'general'"),
    ("lifecycle_stage", sa.String(16), "'lead'"),
    ("external_id", sa.String(100), "''"),
    ("search_text", sa.Text, "''"),
)
ACCOUNT_COLUMNS = (
    ("phone", sa.String(32), "''"),
    ("owner_id", sa.String(64), "''"),
    ("classification", sa.String(16), "'general'"),
    ("tags", sa.JSON, "'[]'"),
    ("address", sa.JSON, "'{}'"),
)
# (name, columns): every list filter and sort starts with the tenant.
CONTACT_INDEXES = (
    ("ix_contacts_tenant_id_create_time_id", ["tenant_id", "create_time", "id"]),
    ("ix_contacts_tenant_id_update_time_id", ["tenant_id", "update_time", "id"]),
    ("ix_contacts_tenant_id_last_name_id", ["tenant_id", "last_name", "id"]),
    ("ix_contacts_tenant_id_owner_id_create_time_id", ["tenant_id", "owner_id", "create_time", "id"]),
    ("ix_contacts_tenant_id_classification_create_time_id", ["tenant_id", "classification", "create_time", "id"]),
    ("ix_contacts_tenant_id_lifecycle_stage_create_time_id", ["tenant_id", "lifecycle_stage", "create_time", "id"]),
    ("ix_contacts_tenant_id_account_id", ["tenant_id", "account_id"]),
    ("ix_contacts_tenant_id_source", ["tenant_id", "source"]),
    ("ix_contacts_tenant_id_email", ["tenant_id", "email"]),
    ("ix_contacts_tenant_id_phone", ["tenant_id", "phone"]),
)

SQLITE_TRIGGERS = (
    """CREATE TRIGGER contacts_fts_insert AFTER INSERT ON contacts WHEN new.search_rowid IS NOT NULL BEGIN
         INSERT INTO contacts_fts(rowid, search_text) VALUES (new.search_rowid, new.search_text);
       END""",
    """CREATE TRIGGER contacts_fts_delete AFTER DELETE ON contacts WHEN old.search_rowid IS NOT NULL BEGIN
         INSERT INTO contacts_fts(contacts_fts, rowid, search_text)
         VALUES ('delete', old.search_rowid, old.search_text);
       END""",
    """CREATE TRIGGER contacts_fts_update AFTER UPDATE OF search_text, search_rowid ON contacts BEGIN
         INSERT INTO contacts_fts(contacts_fts, rowid, search_text)
         SELECT 'delete', old.search_rowid, old.search_text WHERE old.search_rowid IS NOT NULL;
         INSERT INTO contacts_fts(rowid, search_text)
         SELECT new.search_rowid, new.search_text WHERE new.search_rowid IS NOT NULL;
       END""",
)


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    for name, type_, default in CONTACT_COLUMNS:
        op.add_column("contacts", sa.Column(name, type_, nullable=False, server_default=sa.text(default)))
    op.add_column("contacts", sa.Column("search_rowid", sa.Integer, nullable=True))
    for name, type_, default in ACCOUNT_COLUMNS:
        op.add_column("accounts", sa.Column(name, type_, nullable=False, server_default=sa.text(default)))

    op.create_table(
        "contact_tags",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("tag", sa.String(50), primary_key=True),
        sa.Column("contact_id", sa.String(36), primary_key=True),
    )
    op.create_index("ix_contact_tags_tenant_id_contact_id", "contact_tags", ["tenant_id", "contact_id"])
    op.create_table(
        "contact_field_history",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("contact_id", sa.String(36), nullable=False),
        sa.Column("field", sa.String(32), nullable=False),
        sa.Column("old_value", sa.String(255), nullable=False),
        sa.Column("new_value", sa.String(255), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("change_time", TS, nullable=False),
    )
    op.create_index(
        "ix_contact_field_history_tenant_id_contact_id_id", "contact_field_history", ["tenant_id", "contact_id", "id"]
    )
    op.create_table(
        "customer_settings",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("title_case_names", sa.Boolean, nullable=False),
        sa.Column("duplicate_policy", sa.String(16), nullable=False),
        sa.Column("default_phone_region", sa.String(2), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("update_time", TS, nullable=False),
    )
    for table in ("contact_tags", "contact_field_history", "customer_settings"):
        enable_tenant_rls(op, table)

    _backfill(bind, postgres)

    for name, columns in CONTACT_INDEXES:
        op.create_index(name, "contacts", columns)
    op.create_index(
        "uq_contacts_tenant_id_external_id",
        "contacts",
        ["tenant_id", "external_id"],
        unique=True,
        sqlite_where=sa.text("external_id <> ''"),
        postgresql_where=sa.text("external_id <> ''"),
    )
    if postgres:
        _postgres_search(bind)
    else:
        _sqlite_search()


def _backfill(bind: sa.engine.Connection, postgres: bool) -> None:
    """Existing contacts: phones/emails lists from phone/email, their document, search rowid and tags."""
    from crm_customer.contact_points import phone_type_of
    from crm_customer.indexing import document_for, tag_rows

    if postgres:  # the owner is bound by FORCE ROW LEVEL SECURITY too: lift it for the backfill
        for table in ("contacts", "accounts", "contact_tags"):
            op.execute(f'ALTER TABLE "{table}" NO FORCE ROW LEVEL SECURITY')
    contacts = sa.table(
        "contacts",
        *(sa.column(c) for c in ("id", "tenant_id", "first_name", "last_name", "email", "phone", "account_id")),
        sa.column("tags", sa.JSON),
        sa.column("phones", sa.JSON),
        sa.column("emails", sa.JSON),
        sa.column("search_text"),
        sa.column("search_rowid"),
    )
    companies = {(r.tenant_id, r.id): r.name for r in bind.execute(sa.text("SELECT tenant_id, id, name FROM accounts"))}
    rows = list(bind.execute(sa.select(contacts).order_by(contacts.c.id)).mappings())
    tags: list[dict[str, str]] = []
    for rowid, row in enumerate(rows, start=1):
        values = dict(row)
        values["phones"] = (
            [{"type": phone_type_of(row["phone"]), "number": row["phone"], "primary": True}] if row["phone"] else []
        )
        values["emails"] = [{"type": "other", "address": row["email"], "primary": True}] if row["email"] else []
        company = companies.get((row["tenant_id"], row["account_id"]), "")
        bind.execute(
            contacts.update()
            .where(contacts.c.id == row["id"])
            .values(
                phones=values["phones"],
                emails=values["emails"],
                search_text=document_for(values, company),
                search_rowid=None if postgres else rowid,
            )
        )
        tags.extend(tag_rows(row["tenant_id"], row["id"], row["tags"] or ()))
    if tags:
        bind.execute(
            sa.text("INSERT INTO contact_tags (tenant_id, tag, contact_id) VALUES (:tenant_id, :tag, :contact_id)"),
            tags,
        )
    if postgres:
        for table in ("contacts", "accounts", "contact_tags"):
            op.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')


def _sqlite_search() -> None:
    op.create_index("uq_contacts_search_rowid", "contacts", ["search_rowid"], unique=True)
    op.execute(
        "CREATE VIRTUAL TABLE contacts_fts USING fts5("
        "search_text, content='contacts', content_rowid='search_rowid', tokenize='trigram')"
    )
    for trigger in SQLITE_TRIGGERS:
        op.execute(trigger)
    op.execute("INSERT INTO contacts_fts(contacts_fts) VALUES ('rebuild')")


def _postgres_search(bind: sa.engine.Connection) -> None:
    op.add_column(
        "contacts",
        sa.Column("search_vector", postgresql.TSVECTOR, sa.Computed(SEARCH_VECTOR, persisted=True), nullable=True),
    )
    op.execute("CREATE INDEX ix_contacts_search_vector ON contacts USING gin (search_vector)")
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        op.execute("CREATE INDEX ix_contacts_search_trgm ON contacts USING gin (search_text gin_trgm_ops)")
    except sa.exc.DBAPIError:
        log.warning("pg_trgm is not available: contact search matches substrings without an index")
    _leakproof_search_operators(bind)


def _leakproof_search_operators(bind: sa.engine.Connection) -> None:
    """Under row-level security PostgreSQL lets an index serve a condition only when its operator's function
    is LEAKPROOF, and LIKE (textlike) and @@ (ts_match_vq) are not marked so, although neither can reveal a
    row's data (they raise no error that depends on it). Unmarked, the search indexes go unused for the
    application role and every text search reads the whole tenant. Only a superuser may mark them; when
    migrations run as another role, a DBA runs these two statements once per database (docs/architecture.md).
    """
    if not bind.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar():
        log.warning(
            "not a superuser: run as one %s, or contact search reads whole tenants under row-level security",
            "; ".join(LEAKPROOF),
        )
        return
    for statement in LEAKPROOF:
        op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        if bind.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar():
            for statement in LEAKPROOF:
                op.execute(statement.replace(" LEAKPROOF", " NOT LEAKPROOF"))
        op.execute("DROP INDEX IF EXISTS ix_contacts_search_trgm")
        op.drop_index("ix_contacts_search_vector", "contacts")
        op.drop_column("contacts", "search_vector")
    else:
        for name in ("contacts_fts_insert", "contacts_fts_delete", "contacts_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS contacts_fts")
        op.drop_index("uq_contacts_search_rowid", "contacts")
    op.drop_index("uq_contacts_tenant_id_external_id", "contacts")
    for name, _ in CONTACT_INDEXES:
        op.drop_index(name, "contacts")
    for table in ("customer_settings", "contact_field_history", "contact_tags"):
        op.drop_table(table)
    for name, _, _ in ACCOUNT_COLUMNS:
        op.drop_column("accounts", name)
    op.drop_column("contacts", "search_rowid")
    for name, _, _ in CONTACT_COLUMNS:
        op.drop_column("contacts", name)
