"""Drop the contact indexes no query reads: every lookup is scoped to a tenant, and each of these columns
has a tenant-led index already (0002). Each index costs every contact insert and update a B-tree write.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

REDUNDANT = {
    "ix_contacts_tenant_id": ["tenant_id"],
    "ix_contacts_email": ["email"],
    "ix_contacts_phone": ["phone"],
    "ix_contacts_account_id": ["account_id"],
    "ix_contacts_owner_id": ["owner_id"],
}


def upgrade() -> None:
    for name in REDUNDANT:
        op.drop_index(name, table_name="contacts", if_exists=True)


def downgrade() -> None:
    for name, columns in REDUNDANT.items():
        op.create_index(name, "contacts", columns)
