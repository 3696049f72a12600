"""PostgreSQL: crm_analyze(table), so an import can refresh the contacts' planner statistics (the service's
role owns no table; see crm_kit.db.migrations.create_analyze_function).

Revision ID: 0010
Revises: 0009
"""

from alembic import op

from crm_kit.db.migrations import ANALYZE_SIGNATURE, create_analyze_function

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_analyze_function(op)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {ANALYZE_SIGNATURE}")
