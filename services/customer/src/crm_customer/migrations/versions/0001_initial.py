"""Contacts and accounts, the kit's system tables, and row-level security.

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
        "accounts",
        *resource_columns(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("industry", sa.String(100), nullable=False),
        sa.Column("website", sa.String(255), nullable=False),
    )
    op.create_table(
        "contacts",
        *resource_columns(),
        sa.Column("first_name", sa.String(100), nullable=False),
        sa.Column("last_name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(320), nullable=False, index=True),
        sa.Column("phone", sa.String(32), nullable=False, index=True),
        sa.Column("account_id", sa.String(36), nullable=False, index=True),
        sa.Column("owner_id", sa.String(64), nullable=False, index=True),
        sa.Column("tags", sa.JSON, nullable=False),
    )
    for table in ("accounts", "contacts"):
        enable_tenant_rls(op, table)


def downgrade() -> None:
    for table in ("contacts", "accounts", "dead_letters", "inbox", "outbox"):
        op.drop_table(table)
