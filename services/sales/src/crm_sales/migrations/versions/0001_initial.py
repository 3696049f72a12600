"""Opportunities, the contacts projection, the kit's system tables, and row-level security.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from crm_kit.contacts import create_contact_refs_table
from crm_kit.db.migrations import create_system_tables, enable_tenant_rls, resource_columns

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_system_tables(op)
    op.create_table(
        "opportunities",
        *resource_columns(),
        sa.Column("contact_id", sa.String(36), nullable=False, index=True),
        sa.Column("contact_name", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("amount", sa.String(32), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("stage", sa.String(64), nullable=False, index=True),
        sa.Column("status", sa.String(8), nullable=False, index=True),
        sa.Column("expected_close_date", sa.String(10), nullable=False),
        sa.Column("owner_id", sa.String(64), nullable=False, index=True),
    )
    enable_tenant_rls(op, "opportunities")
    create_contact_refs_table(op)


def downgrade() -> None:
    for table in ("contact_refs", "opportunities", "dead_letters", "inbox", "outbox"):
        op.drop_table(table)
