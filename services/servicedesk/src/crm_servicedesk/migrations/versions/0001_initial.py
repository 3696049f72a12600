"""Tickets, the contacts projection, the kit's system tables, and row-level security.

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
        "tickets",
        *resource_columns(),
        sa.Column("contact_id", sa.String(36), nullable=False, index=True),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("priority", sa.String(16), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("channel", sa.String(16), nullable=False),
    )
    enable_tenant_rls(op, "tickets")
    create_contact_refs_table(op)


def downgrade() -> None:
    for table in ("contact_refs", "tickets", "dead_letters", "inbox", "outbox"):
        op.drop_table(table)
