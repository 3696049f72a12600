"""Contact import jobs and their problems (crm_customer.transfer).

Revision ID: 0008
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from crm_kit.db.migrations import enable_tenant_rls, resource_columns

revision = "0008"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "import_jobs",
        *resource_columns(),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("match_email", sa.Boolean, nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("total_rows", sa.Integer, nullable=False),
        sa.Column("processed_rows", sa.Integer, nullable=False),
        sa.Column("created", sa.Integer, nullable=False),
        sa.Column("updated", sa.Integer, nullable=False),
        sa.Column("unchanged", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("progress_percent", sa.Integer, nullable=False),
        sa.Column("problem_count", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("finish_time", ts, nullable=True),
    )
    op.create_table(
        "import_problems",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("row", sa.Integer, nullable=False),
        sa.Column("column", sa.String(255), nullable=False),
        sa.Column("field", sa.String(255), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("problem", sa.Text, nullable=False),
    )
    enable_tenant_rls(op, "import_jobs")
    enable_tenant_rls(op, "import_problems")


def downgrade() -> None:
    op.drop_table("import_problems")
    op.drop_table("import_jobs")
