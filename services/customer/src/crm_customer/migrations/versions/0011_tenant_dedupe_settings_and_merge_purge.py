"""The tenant's duplicate threshold and merge retention (customer_settings, NULL: the service-wide
default), and the purge of expired merges' snapshots: contact_merges.purge_time, an index of the merges
still holding snapshots, and on PostgreSQL `crm_purge_merge_snapshots(timestamptz)`.

The application role is bound by row-level security, so it cannot reach other tenants' merges; the
SECURITY DEFINER function does the one cross-tenant change allowed: emptying the snapshots of merges whose
expire_time passed (by the database's clock too, whatever time the caller gives). The owner is bound by
FORCE ROW LEVEL SECURITY as well (unless it is a superuser): two policies open contact_merges to the owner
only while the function has set app.purge_merges, and only for expired rows.

Revision ID: 0011
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from crm_kit.db.migrations import grant_app_function

revision = "0011"
down_revision = "0007"
branch_labels = None
depends_on = None

PURGE_SIGNATURE = "crm_purge_merge_snapshots(timestamptz)"
PURGING = "current_setting('app.purge_merges', true) = 'on'"
POLICIES = ("merge_purge_read", "merge_purge_write")
INDEX = "ix_contact_merges_expire_time_unpurged"


def upgrade() -> None:
    op.add_column("customer_settings", sa.Column("duplicate_threshold", sa.Integer, nullable=True))
    op.add_column("customer_settings", sa.Column("merge_retention_days", sa.Integer, nullable=True))
    op.add_column("contact_merges", sa.Column("purge_time", sa.DateTime(timezone=True), nullable=True))
    unpurged = sa.text("purge_time IS NULL")
    op.create_index(INDEX, "contact_merges", ["expire_time"], sqlite_where=unpurged, postgresql_where=unpurged)
    if op.get_bind().dialect.name == "postgresql":
        _purge_function()


def _purge_function() -> None:
    op.execute(f'CREATE POLICY {POLICIES[0]} ON "contact_merges" FOR SELECT TO CURRENT_USER USING ({PURGING})')
    op.execute(
        f'CREATE POLICY {POLICIES[1]} ON "contact_merges" FOR UPDATE TO CURRENT_USER '
        f"USING ({PURGING} AND expire_time <= now()) WITH CHECK ({PURGING} AND expire_time <= now())"
    )
    op.execute(
        """
        CREATE FUNCTION crm_purge_merge_snapshots(p_now timestamptz)
        RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
        DECLARE
            cutoff timestamptz := LEAST(p_now, now());
            purged integer;
        BEGIN
            PERFORM set_config('app.purge_merges', 'on', true);
            UPDATE contact_merges
               SET duplicate_snapshot = '{}'::json, survivor_before = '{}'::json, survivor_after = '{}'::json,
                   purge_time = cutoff
             WHERE purge_time IS NULL AND expire_time <= cutoff;
            GET DIAGNOSTICS purged = ROW_COUNT;
            PERFORM set_config('app.purge_merges', 'off', true);
            RETURN purged;
        END
        $$
        """
    )
    grant_app_function(op, PURGE_SIGNATURE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {PURGE_SIGNATURE}")
        for policy in POLICIES:
            op.execute(f'DROP POLICY IF EXISTS {policy} ON "contact_merges"')
    op.drop_index(INDEX, table_name="contact_merges")
    with op.batch_alter_table("contact_merges") as batch:
        batch.drop_column("purge_time")
    with op.batch_alter_table("customer_settings") as batch:
        batch.drop_column("merge_retention_days")
        batch.drop_column("duplicate_threshold")
