"""Campaigns, the kit's system tables, and row-level security.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from crm_kit.db.migrations import create_system_tables, enable_tenant_rls, resource_columns

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_system_tables(op)
    op.create_table(
        "campaigns",
        *resource_columns(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False, index=True),
        sa.Column("budget", sa.String(32), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("start_date", sa.String(10), nullable=False),
        sa.Column("end_date", sa.String(10), nullable=False),
    )
    enable_tenant_rls(op, "campaigns")


def downgrade() -> None:
    for table in ("campaigns", "dead_letters", "inbox", "outbox"):
        op.drop_table(table)
