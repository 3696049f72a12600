"""Duplicates and merges: contacts' match keys (backfilled), dedupe jobs and their pairs, contact merges.

Revision ID: 0007
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from crm_kit.db.migrations import enable_tenant_rls

revision = "0007"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
TABLES = ("contact_match_keys", "dedupe_jobs", "duplicate_pairs", "contact_merges")


def upgrade() -> None:
    op.create_table(
        "contact_match_keys",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("value", sa.String(320), primary_key=True),
        sa.Column("contact_id", sa.String(36), primary_key=True),
    )
    op.create_index("ix_contact_match_keys_tenant_id_contact_id", "contact_match_keys", ["tenant_id", "contact_id"])
    op.create_table(
        "dedupe_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("min_score", sa.Integer, nullable=False),
        sa.Column("progress_percent", sa.Integer, nullable=False),
        sa.Column("contacts_total", sa.Integer, nullable=False),
        sa.Column("candidate_pairs", sa.Integer, nullable=False),
        sa.Column("pairs_scored", sa.Integer, nullable=False),
        sa.Column("pairs_found", sa.Integer, nullable=False),
        sa.Column("blocks_skipped", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("start_time", TS, nullable=True),
        sa.Column("finish_time", TS, nullable=True),
        sa.Column("heartbeat_time", TS, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
    )
    op.create_index("ix_dedupe_jobs_tenant_id_create_time", "dedupe_jobs", ["tenant_id", "create_time"])
    op.create_table(
        "duplicate_pairs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("first_id", sa.String(36), nullable=False),
        sa.Column("second_id", sa.String(36), nullable=False),
        sa.Column("score", sa.Integer, nullable=False),
        sa.Column("reasons", sa.JSON, nullable=False),
    )
    op.create_index(
        "ix_duplicate_pairs_tenant_id_job_id_score_id", "duplicate_pairs", ["tenant_id", "job_id", "score", "id"]
    )
    op.create_index("ix_duplicate_pairs_tenant_id_first_id", "duplicate_pairs", ["tenant_id", "first_id"])
    op.create_index("ix_duplicate_pairs_tenant_id_second_id", "duplicate_pairs", ["tenant_id", "second_id"])
    op.create_table(
        "contact_merges",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column("survivor_id", sa.String(36), nullable=False),
        sa.Column("duplicate_id", sa.String(36), nullable=False),
        sa.Column("duplicate_snapshot", sa.JSON, nullable=False),
        sa.Column("survivor_before", sa.JSON, nullable=False),
        sa.Column("survivor_after", sa.JSON, nullable=False),
        sa.Column("moved", sa.JSON, nullable=False),
        sa.Column("field_choices", sa.JSON, nullable=False),
        sa.Column("merged_by", sa.String(128), nullable=False),
        sa.Column("merge_time", TS, nullable=False),
        sa.Column("expire_time", TS, nullable=False),
        sa.Column("unmerged_by", sa.String(128), nullable=False),
        sa.Column("unmerge_time", TS, nullable=True),
    )
    op.create_index("ix_contact_merges_tenant_id_survivor_id", "contact_merges", ["tenant_id", "survivor_id"])
    op.create_index("ix_contact_merges_tenant_id_duplicate_id", "contact_merges", ["tenant_id", "duplicate_id"])
    for table in TABLES:
        enable_tenant_rls(op, table)
    _backfill(op.get_bind())


def _backfill(bind: sa.engine.Connection) -> None:
    """The match keys of existing contacts (the owner is bound by FORCE ROW LEVEL SECURITY: lifted here)."""
    from crm_customer.dedupe import key_rows

    postgres = bind.dialect.name == "postgresql"
    if postgres:
        for table in ("contacts", "contact_match_keys"):
            op.execute(f'ALTER TABLE "{table}" NO FORCE ROW LEVEL SECURITY')
    columns = ("id", "tenant_id", "first_name", "last_name", "email", "phone", "account_id")
    contacts = sa.table(
        "contacts", *(sa.column(c) for c in columns), sa.column("emails", sa.JSON), sa.column("phones", sa.JSON)
    )
    keys = sa.table("contact_match_keys", *(sa.column(c) for c in ("tenant_id", "kind", "value", "contact_id")))
    rows: list[dict[str, str]] = []
    for row in bind.execute(sa.select(contacts).order_by(contacts.c.id)).mappings():
        rows.extend(key_rows(row["tenant_id"], row["id"], dict(row)))
        if len(rows) >= 5000:
            bind.execute(keys.insert(), rows)
            rows = []
    if rows:
        bind.execute(keys.insert(), rows)
    if postgres:
        for table in ("contacts", "contact_match_keys"):
            op.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
