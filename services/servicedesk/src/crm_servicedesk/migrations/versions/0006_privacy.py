"""Privacy: the contacts erased in each tenant, consulted so that replayed events never bring a person back
(crm_kit.privacy).

Revision ID: 0006
Revises: 0001
"""

from alembic import op

from crm_kit.privacy import TABLE, create_privacy_tables

revision = "0006"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_privacy_tables(op)


def downgrade() -> None:
    op.drop_table(TABLE)
