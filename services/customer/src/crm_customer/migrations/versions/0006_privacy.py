"""Privacy: consent per channel (an append-only history) and the contacts erased in each tenant.

Revision ID: 0006
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from crm_kit.db.migrations import enable_tenant_rls
from crm_kit.privacy import TABLE as ERASED_CONTACTS
from crm_kit.privacy import create_privacy_tables

revision = "0006"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "consents",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column("contact_id", sa.String(36), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("captured_at", ts, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("record_time", ts, nullable=False),
    )
    op.create_index(
        "ix_consents_tenant_id_contact_id_channel_captured_at",
        "consents",
        ["tenant_id", "contact_id", "channel", "captured_at"],
    )
    enable_tenant_rls(op, "consents")
    create_privacy_tables(op)


def downgrade() -> None:
    op.drop_table(ERASED_CONTACTS)
    op.drop_table("consents")
