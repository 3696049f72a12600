"""Read model tables, the kit's system tables, and row-level security.

Projections of other services' resources keyed by (tenant_id, id), with the version they were built from,
and one stats row per tenant.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from crm_kit.db.migrations import create_system_tables, enable_tenant_rls

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PROJECTIONS = ("contact_views", "account_views", "opportunity_views", "ticket_views", "campaign_views")


def projection_columns() -> list[sa.Column]:
    return [
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
    ]


def upgrade() -> None:
    create_system_tables(op)
    op.create_table("contact_views", *projection_columns())
    op.create_table("account_views", *projection_columns())
    op.create_table(
        "opportunity_views",
        *projection_columns(),
        sa.Column("stage", sa.String(100), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("amount", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
    )
    op.create_index("ix_opportunity_views_tenant_id_status", "opportunity_views", ["tenant_id", "status"])
    op.create_table(
        "ticket_views",
        *projection_columns(),
        sa.Column("priority", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
    )
    op.create_index("ix_ticket_views_tenant_id_status", "ticket_views", ["tenant_id", "status"])
    op.create_table(
        "campaign_views",
        *projection_columns(),
        sa.Column("status", sa.String(32), nullable=False),
    )
    op.create_index("ix_campaign_views_tenant_id_status", "campaign_views", ["tenant_id", "status"])
    op.create_table(
        "tenant_stats",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("events_processed", sa.Integer, nullable=False),
        sa.Column("events_ignored", sa.Integer, nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=True),
    )
    for table in (*PROJECTIONS, "tenant_stats"):
        enable_tenant_rls(op, table)


def downgrade() -> None:
    for table in ("tenant_stats", *reversed(PROJECTIONS), "dead_letters", "inbox", "outbox"):
        op.drop_table(table)
