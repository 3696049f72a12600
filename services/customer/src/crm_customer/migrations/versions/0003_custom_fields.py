"""Custom fields per tenant: definitions, the values on contacts and accounts, and their typed index.

Revision ID: 0003
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from crm_kit.db.migrations import enable_tenant_rls, resource_columns

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

VALUE_COLUMNS = ("text_value", "number_value", "date_value", "bool_value")


def upgrade() -> None:
    op.create_table(
        "custom_field_definitions",
        *resource_columns(),
        sa.Column("entity", sa.String(16), nullable=False),
        sa.Column("key", sa.String(40), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("label_zh", sa.String(100), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("required", sa.Boolean, nullable=False),
        sa.UniqueConstraint("tenant_id", "entity", "key", name="uq_custom_field_definitions_tenant_id_entity_key"),
    )
    op.create_table(
        "custom_field_values",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("entity", sa.String(16), nullable=False),
        sa.Column("record_id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(40), nullable=False),
        sa.Column("ordinal", sa.SmallInteger, nullable=False),
        sa.Column("text_value", sa.String(500), nullable=True),
        sa.Column("number_value", sa.Float, nullable=True),
        sa.Column("date_value", sa.Date, nullable=True),
        sa.Column("bool_value", sa.Boolean, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "entity", "record_id", "key", "ordinal", name="pk_custom_field_values"),
        # SQLite: the rows live in the primary key's b-tree, so probing one record's value is one lookup.
        sqlite_with_rowid=False,
    )
    for column in VALUE_COLUMNS:
        short = column.removesuffix("_value")
        op.create_index(
            f"ix_custom_field_values_{short}",
            "custom_field_values",
            ["tenant_id", "entity", "key", column, "record_id"],
        )
    for table in ("contacts", "accounts"):
        op.add_column(table, sa.Column("custom_fields", sa.JSON, nullable=False, server_default=sa.text("'{}'")))
    for table in ("custom_field_definitions", "custom_field_values"):
        enable_tenant_rls(op, table)


def downgrade() -> None:
    for table in ("contacts", "accounts"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("custom_fields")
    op.drop_table("custom_field_values")
    op.drop_table("custom_field_definitions")
