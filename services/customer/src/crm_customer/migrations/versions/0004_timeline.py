"""The interaction timeline: calls, emails, meetings and notes, and entries learned from other services' events.

Revision ID: 0004
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from crm_kit.db.migrations import enable_tenant_rls, resource_columns

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "interactions",
        *resource_columns(),
        sa.Column("contact_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("occurred_at", ts, nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("duration_seconds", sa.Integer, nullable=False),
        sa.Column("owner_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("reference_type", sa.String(64), nullable=False),
        sa.Column("reference_id", sa.String(64), nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
    )
    # The timeline query: one contact, newest first, keyset on (occurred_at, id).
    op.create_index(
        "ix_interactions_tenant_id_contact_id_occurred_at_id",
        "interactions",
        ["tenant_id", "contact_id", "occurred_at", "id"],
    )
    # Checking a kind filter that is not one of the known kinds.
    op.create_index("ix_interactions_tenant_id_kind", "interactions", ["tenant_id", "kind"])
    enable_tenant_rls(op, "interactions")


def downgrade() -> None:
    op.drop_table("interactions")
