"""`crm-gateway serve` and `crm-gateway migrate`."""

from __future__ import annotations

import click

from crm_gateway import migrations
from crm_gateway.config import load_settings
from crm_kit.logging import configure_logging


@click.group(help="The CRM API gateway.")
def cli() -> None:
    pass


@cli.command(help="Serve HTTP with gunicorn on GATEWAY_HOST:GATEWAY_PORT.")
@click.option("--migrate/--no-migrate", default=False, help="Apply migrations first (local use).")
def serve(migrate: bool) -> None:
    from crm_gateway.server import NotMigrated
    from crm_gateway.server import serve as run_server

    settings = load_settings()
    configure_logging("gateway", settings.kit.log_level, settings.kit.log_format)
    if migrate:
        migrations.upgrade(settings.gateway.migration_database_url, settings.kit.db_app_role)
    try:
        run_server(settings)
    except NotMigrated as exc:
        raise click.ClickException(str(exc)) from None


@cli.command(help="Apply the gateway's database migrations (GATEWAY_MIGRATION_DATABASE_URL).")
def migrate() -> None:
    settings = load_settings()
    configure_logging("gateway", settings.kit.log_level, settings.kit.log_format)
    migrations.upgrade(settings.gateway.migration_database_url, settings.kit.db_app_role)
    click.echo(f"gateway database at revision {migrations.head_revision()}")


def main() -> None:
    cli(prog_name="crm-gateway")


if __name__ == "__main__":
    main()
