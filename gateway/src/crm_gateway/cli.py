"""crmctl: the operator's command line (tenants, migrations, signing keys, API clients, events)."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from crm_gateway import migrations
from crm_gateway.config import SERVICES, Settings, load_settings
from crm_gateway.db import Database
from crm_gateway.models import ROLES, utcnow

# Not a terminal (scripts, CliRunner): wide enough that tables never truncate ids or slugs.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


def _settings() -> Settings:
    return load_settings()


def _migrate_gateway(settings: Settings) -> None:
    try:
        migrations.upgrade(settings.gateway.migration_database_url, settings.kit.db_app_role)
    except OperationalError as exc:
        raise click.ClickException(f"cannot reach the gateway database: {exc.orig or exc}") from None


def _refuse_a_stray_default(settings: Settings) -> None:
    """The built-in GATEWAY_DATABASE_URL is a SQLite file relative to the working directory (the checkout,
    where `make dev` runs). From any other directory it would be a new, empty database: tenants created
    there could never log in, and imports would find no tenant. Only `crmctl migrate` creates it."""
    if os.environ.get("GATEWAY_DATABASE_URL"):
        return
    url = make_url(settings.gateway.database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise click.ClickException(
            f"no gateway database at {Path(url.database).resolve()}: run crmctl in the directory `make dev` "
            "runs in (the checkout), or set GATEWAY_DATABASE_URL (`crmctl migrate` creates a new one)"
        )


def _migrated_db(settings: Settings) -> Database:
    """The gateway database, migrated to head first (idempotent)."""
    _refuse_a_stray_default(settings)
    _migrate_gateway(settings)
    return Database(settings.gateway.database_url)


def _service_script(service: str) -> Path | None:
    script = Path(sys.executable).parent / f"crm-{service}"
    return script if script.exists() else None


@click.group(help="Operate a CRM installation.")
def cli() -> None:
    pass


# --- tenants ------------------------------------------------------------------------------------------


@cli.group(help="Tenants and their first administrator.")
def tenants() -> None:
    pass


@tenants.command("create", help="Create a tenant with its first admin user.")
@click.argument("slug")
@click.option("--admin-email", required=True, help="Email of the tenant's first administrator.")
@click.option(
    "--admin-password",
    required=True,
    help="At least 10 characters with letters and digits.",
)
@click.option("--name", default=None, help="Display name (defaults to the slug).")
@click.option("--cell", default="default", show_default=True, help="Cell serving the tenant.")
def tenants_create(slug: str, admin_email: str, admin_password: str, name: str | None, cell: str) -> None:
    from crm_gateway.tenants import DirectoryError, create_tenant, normalize_email, validate_password, validate_slug

    settings = _settings()
    try:  # validate before touching the database, so bad input never migrates anything
        validate_slug(slug)
        normalize_email(admin_email)
        validate_password(admin_password)
    except DirectoryError as exc:
        raise click.ClickException(exc.message) from None
    if cell not in settings.gateway.cell_endpoints():
        raise click.ClickException(f"unknown cell {cell!r}; configure it in GATEWAY_CELLS first")
    db = _migrated_db(settings)
    try:
        created = create_tenant(
            db, slug=slug, name=name, admin_email=admin_email, admin_password=admin_password, cell=cell
        )
    except DirectoryError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        db.dispose()
    console.print(f"[green]created tenant[/] [bold]{created.tenant.slug}[/] ({created.tenant.id})")
    console.print(f"admin user {created.admin.email} ({created.admin.id})")


@tenants.command("list", help="List tenants.")
def tenants_list() -> None:
    from crm_gateway.tenants import list_tenants

    db = _migrated_db(_settings())
    try:
        rows = list_tenants(db)
    finally:
        db.dispose()
    table = Table("slug", "id", "name", "cell", "users", "created")
    for tenant, users in rows:
        table.add_row(
            tenant.slug,
            tenant.id,
            tenant.name,
            tenant.cell,
            str(users),
            tenant.created_at.isoformat(timespec="seconds"),
        )
    console.print(table)


# --- migrations ---------------------------------------------------------------------------------------


@cli.command(help="Migrate the gateway database, then every service installed beside crmctl.")
@click.option("--gateway-only", is_flag=True, help="Skip the services.")
def migrate(gateway_only: bool) -> None:
    settings = _settings()
    _migrate_gateway(settings)
    console.print(f"[green]gateway[/] migrated to {migrations.head_revision()}")
    if gateway_only:
        return
    failed: list[str] = []
    for service in SERVICES:
        script = _service_script(service)
        if script is None:
            console.print(f"[dim]{service}: not installed here, skipped[/]")
            continue
        result = subprocess.run([str(script), "migrate"], check=False)
        if result.returncode == 0:
            console.print(f"[green]{service}[/] migrated")
        else:
            err_console.print(f"[red]{service}: migrate failed with exit code {result.returncode}[/]")
            failed.append(service)
    if failed:
        raise click.ClickException(f"migrations failed for: {', '.join(failed)}")


# --- signing keys -------------------------------------------------------------------------------------


@cli.group(help="The gateway's token signing keys.")
def keys() -> None:
    pass


@keys.command("rotate", help="Add a new signing key; retire keys superseded long enough ago.")
def keys_rotate() -> None:
    from crm_gateway.auth.keys import rotate_keys

    settings = _settings()
    if settings.gateway.signing_key_file is not None:
        raise click.ClickException("signing keys come from GATEWAY_SIGNING_KEY_FILE; rotate that secret instead")
    db = _migrated_db(settings)
    try:
        new_kid, retired = rotate_keys(db, timedelta(seconds=settings.gateway.key_retire_after_seconds))
    finally:
        db.dispose()
    console.print(f"[green]new signing key[/] {new_kid}")
    for kid in retired:
        console.print(f"retired {kid}")
    console.print("[dim]workers pick the new key up within GATEWAY_KEY_CACHE_SECONDS[/]")


@keys.command("list", help="List signing keys.")
def keys_list() -> None:
    from crm_gateway.auth.keys import list_keys

    db = _migrated_db(_settings())
    try:
        rows = list_keys(db)
    finally:
        db.dispose()
    table = Table("kid", "created", "retired")
    for row in rows:
        table.add_row(
            row.kid,
            row.created_at.isoformat(timespec="seconds"),
            row.retired_at.isoformat(timespec="seconds") if row.retired_at else "",
        )
    console.print(table)


# --- API clients --------------------------------------------------------------------------------------


@cli.group(help="API clients (client credentials for integrations).")
def clients() -> None:
    pass


@clients.command("create", help="Create an API client; its secret is shown once.")
@click.option("--tenant", "tenant_slug", required=True, help="Tenant slug.")
@click.option("--name", required=True)
@click.option("--scope", "scopes", multiple=True, required=True, help="e.g. contacts:read (repeatable).")
@click.option("--role", "roles", multiple=True, default=("member",), show_default=True, type=click.Choice(ROLES))
@click.option("--expires-in-days", type=click.IntRange(1, 3650), default=None)
def clients_create(
    tenant_slug: str, name: str, scopes: tuple[str, ...], roles: tuple[str, ...], expires_in_days: int | None
) -> None:
    from crm_gateway.auth import api_clients
    from crm_gateway.rest.resources import scope_resources
    from crm_gateway.tenants import find_tenant

    settings = _settings()
    try:
        checked = api_clients.check_scopes(scopes, scope_resources())
    except api_clients.ApiClientError as exc:
        raise click.ClickException(str(exc)) from None
    db = _migrated_db(settings)
    try:
        tenant = find_tenant(db, slug=tenant_slug)
        if tenant is None:
            raise click.ClickException(f"no tenant {tenant_slug!r}")
        pepper_setting = settings.gateway.api_key_pepper
        pepper = api_clients.resolve_pepper(db, pepper_setting.get_secret_value() if pepper_setting else None)
        expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
        try:
            new = api_clients.create(
                db, pepper, tenant_id=tenant.id, name=name, roles=roles, scopes=checked, expires_at=expires
            )
        except api_clients.ApiClientError as exc:
            raise click.ClickException(str(exc)) from None
    finally:
        db.dispose()
    console.print(f"client_id     {new.client.client_id}")
    console.print(f"client_secret {new.secret}")
    console.print("[yellow]store the secret now: it cannot be shown again[/]")


@clients.command("list", help="List API clients.")
@click.option("--tenant", "tenant_slug", default=None)
def clients_list(tenant_slug: str | None) -> None:
    from crm_gateway.auth import api_clients
    from crm_gateway.tenants import find_tenant

    db = _migrated_db(_settings())
    try:
        tenant_id = None
        if tenant_slug:
            tenant = find_tenant(db, slug=tenant_slug)
            if tenant is None:
                raise click.ClickException(f"no tenant {tenant_slug!r}")
            tenant_id = tenant.id
        rows = api_clients.list_clients(db, tenant_id)
    finally:
        db.dispose()
    table = Table("client_id", "name", "roles", "scopes", "expires", "revoked", "last used")
    for c in rows:
        table.add_row(
            c.client_id,
            c.name,
            ",".join(c.roles),
            " ".join(c.scopes),
            c.expires_at.isoformat(timespec="seconds") if c.expires_at else "",
            "yes" if c.revoked_at else "",
            c.last_used_at.isoformat(timespec="seconds") if c.last_used_at else "",
        )
    console.print(table)


@clients.command("revoke", help="Revoke an API client.")
@click.argument("client_id")
def clients_revoke(client_id: str) -> None:
    from crm_gateway.auth import api_clients

    db = _migrated_db(_settings())
    try:
        if not api_clients.revoke(db, client_id):
            raise click.ClickException(f"no API client {client_id!r}")
    finally:
        db.dispose()
    console.print(f"revoked {client_id}")


# --- contacts -----------------------------------------------------------------------------------------


@cli.group(help="Contacts of a tenant.")
def contacts() -> None:
    pass


@contacts.command(
    "import",
    help=(
        "Import contacts from a CSV or XLSX file into a tenant. Headers that are field names (external_id,"
        " first_name, last_name, email, phone, tags, ...) or common Chinese headers (姓名, 手机, ...) need no"
        " mapping. Rows with an external_id already imported update that contact (or are left unchanged), so"
        " a re-run never duplicates; a row with a problem is reported and changes nothing.\n\n"
        "Runs beside the gateway database (GATEWAY_DATABASE_URL; by default var/data/gateway.db in the"
        " checkout) and acts as the tenant's first admin: no login is needed.\n\n"
        "Exit code 0 when every row was fine, 1 when any row has a problem (dry run or not) or the job failed."
    ),
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", "tenant_slug", required=True, help="Tenant slug.")
@click.option("--dry-run", is_flag=True, help="Check every row and report problems; write nothing.")
@click.option(
    "--mapping",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='JSON {"column header": "field"} or lines "column header: field".',
)
@click.option("--match-email", is_flag=True, help="Rows without id or external_id update the contact with that email.")
def contacts_import(file: Path, tenant_slug: str, dry_run: bool, mapping: Path | None, match_email: bool) -> None:
    from crm_gateway import contact_transfer

    settings = _settings()
    db = _migrated_db(settings)
    try:
        target = contact_transfer.target(db, settings, tenant_slug)
        job = contact_transfer.run_import(
            target,
            file,
            dry_run=dry_run,
            mapping=contact_transfer.read_mapping(mapping),
            match_email=match_email,
            console=console,
        )
    except contact_transfer.TransferError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.dispose()
    contact_transfer.report(job, console)
    if contact_transfer.has_problems(job):
        raise SystemExit(1)


@contacts.command("export", help="Export a tenant's contacts, or a filtered list of them, as CSV or XLSX.")
@click.option("--tenant", "tenant_slug", required=True, help="Tenant slug.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The file to write (default: the name the service gives, in the current directory); - for stdout.",
)
@click.option("--format", "fmt", type=click.Choice(("csv", "xlsx")), default="csv", show_default=True)
@click.option("-q", "--query", "q", default="", help="Full text: name, email, phone, company.")
@click.option("--tag", "tags", multiple=True, help="Contacts with this tag (repeatable: all of them).")
@click.option("--classification", default="", help="core, potential or general.")
@click.option("--lifecycle-stage", default="", help="lead, prospect, customer, loyal or churned.")
@click.option("--owner-id", default="", help="The owner's user id.")
@click.option("--account-id", default="", help="The account's id.")
@click.option("--created-after", default="", help="RFC 3339 time or YYYY-MM-DD.")
@click.option("--created-before", default="", help="RFC 3339 time or YYYY-MM-DD.")
@click.option("--custom-filter", "custom_filters", multiple=True, help="e.g. score>=10 (repeatable).")
@click.option("--order-by", default="", help="e.g. last_name,-create_time or custom.score.")
def contacts_export(
    tenant_slug: str,
    output: Path | None,
    fmt: str,
    q: str,
    tags: tuple[str, ...],
    classification: str,
    lifecycle_stage: str,
    owner_id: str,
    account_id: str,
    created_after: str,
    created_before: str,
    custom_filters: tuple[str, ...],
    order_by: str,
) -> None:
    from crm.customer.v1 import transfer_pb2
    from crm_gateway import contact_transfer

    request = transfer_pb2.ExportContactsRequest(
        format=fmt,
        q=q,
        tags=list(tags),
        classification=classification,
        lifecycle_stage=lifecycle_stage,
        owner_id=owner_id,
        account_id=account_id,
        created_after=created_after,
        created_before=created_before,
        custom_filter=list(custom_filters),
        order_by=order_by,
    )
    settings = _settings()
    db = _migrated_db(settings)
    try:
        exported = contact_transfer.run_export(contact_transfer.target(db, settings, tenant_slug), request)
    except contact_transfer.TransferError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.dispose()
    if output is not None and str(output) == "-":
        with click.open_file("-", "wb") as stdout:
            stdout.write(exported.content)
        return
    path = output or Path(exported.filename)
    path.write_bytes(exported.content)
    click.echo(f"wrote {path} ({len(exported.content):,} bytes, {exported.content_type})", err=True)


# --- events and dead letters --------------------------------------------------------------------------


@cli.group(help="The JetStream event stream.")
def events() -> None:
    pass


@events.command("ensure-stream", help="Create or update the event stream (CRM_NATS_URL, CRM_EVENTS_STREAM).")
@click.option("--replicas", type=click.IntRange(1, 5), default=1, show_default=True)
def events_ensure_stream(replicas: int) -> None:
    try:
        from crm_kit.events.stream import ensure_stream
    except ImportError as exc:
        raise click.ClickException(f"crm_kit.events.stream is not available: {exc}") from None
    settings = _settings()
    try:
        result = ensure_stream(settings.kit.nats_servers, settings.kit.events_stream, replicas)
        if inspect.isawaitable(result):
            asyncio.run(_await(result))
    except Exception as exc:
        raise click.ClickException(f"cannot ensure stream {settings.kit.events_stream}: {exc}") from None
    console.print(f"[green]stream {settings.kit.events_stream} ready[/] (replicas={replicas})")


async def _await(awaitable: object) -> object:
    return await awaitable  # type: ignore[misc]


@cli.group(help="Events a service's consumers gave up on.")
def deadletters() -> None:
    pass


def _delegate(service: str, args: list[str]) -> None:
    script = _service_script(service)
    if script is None:
        raise click.ClickException(f"crm-{service} is not installed next to {sys.executable}")
    code = subprocess.run([str(script), "deadletters", *args], check=False).returncode
    if code != 0:
        raise SystemExit(code)


_SERVICE = click.Choice(SERVICES)


@deadletters.command("list", help="List a service's dead letters.")
@click.option("--service", required=True, type=_SERVICE)
def deadletters_list(service: str) -> None:
    _delegate(service, ["list"])


@deadletters.command("replay", help="Replay one dead letter (by id) of a service.")
@click.option("--service", required=True, type=_SERVICE)
@click.argument("id")
def deadletters_replay(service: str, id: str) -> None:
    _delegate(service, ["replay", id])


def main() -> None:
    cli(prog_name="crmctl")


if __name__ == "__main__":
    main()
