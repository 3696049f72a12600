"""The audit log: append-only, tenant-scoped, with row-level security (crm_kit.audit); and the index a
member's list of their own opportunities needs (crm_kit.access filters on the owner, pages on the id).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from crm_kit.db.migrations import create_audit_table, drop_audit_table

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_audit_table(op)
    op.create_index("ix_opportunities_tenant_id_owner_id_id", "opportunities", ["tenant_id", "owner_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_opportunities_tenant_id_owner_id_id", "opportunities")
    drop_audit_table(op)
