"""crmctl, driven through click's CliRunner against a real (temporary) gateway database."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from crm_gateway.cli import cli
from crm_gateway.config import load_settings
from crm_gateway.db import Database
from crm_gateway.tenants import list_tenants
from crm_kit.testing.nats import NatsServer


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    url = f"sqlite:///{tmp_path}/var/gateway.db"  # not migrated yet: the commands do it
    for var in (
        "GATEWAY_SIGNING_KEY_FILE",
        "GATEWAY_CELLS",
        "GATEWAY_API_KEY_PEPPER",
        "GATEWAY_MIGRATION_DATABASE_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", url)
    return {"GATEWAY_DATABASE_URL": url}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def create(slug: str = "acme", email: str = "admin@acme.test", password: str = "password-123", *extra: str) -> Result:
    return run("tenants", "create", "--admin-email", email, "--admin-password", password, *extra, "--", slug)


def test_the_default_database_must_exist_outside_migrate(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The built-in default is var/data/gateway.db in the working directory: elsewhere than the checkout a
    # command would create an empty database and a tenant nobody can log in to.
    monkeypatch.delenv("GATEWAY_DATABASE_URL")
    stray = tmp_path / "elsewhere"
    stray.mkdir()
    monkeypatch.chdir(stray)
    for args in (
        ("tenants", "list"),
        ("tenants", "create", "--admin-email", "a@b.test", "--admin-password", "password-123", "--", "stray"),
    ):
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code != 0 and "no gateway database at" in result.output, result.output
        assert "GATEWAY_DATABASE_URL" in result.output
    assert not (stray / "var").exists()
    # `migrate` creates it, and the other commands then use it.
    assert run("migrate", "--gateway-only").exit_code == 0
    assert (stray / "var" / "data" / "gateway.db").exists()
    assert run("tenants", "list").exit_code == 0


def test_create_migrates_and_creates(env: dict[str, str]) -> None:
    result = create("acme", "admin@acme.test", "password-123", "--name", "Acme 公司")
    assert result.exit_code == 0, result.output
    assert "acme" in result.output
    db = Database(env["GATEWAY_DATABASE_URL"])
    [(tenant, users)] = list_tenants(db)
    db.dispose()
    assert tenant.slug == "acme" and tenant.name == "Acme 公司" and tenant.cell == "default" and users == 1

    listed = run("tenants", "list")
    assert listed.exit_code == 0 and "acme" in listed.output


def test_duplicate_slug(env: dict[str, str]) -> None:
    assert create().exit_code == 0
    result = create()
    assert result.exit_code != 0
    assert "already exists" in result.output


@pytest.mark.parametrize("slug", ["Acme", "-acme", "acme-", "ac_me", "a--b", "x" * 64, "ünï", "api"])
def test_invalid_slug(env: dict[str, str], slug: str) -> None:
    result = create(slug)
    assert result.exit_code != 0
    assert "slug" in result.output


@pytest.mark.parametrize("email", ["nope", "a@b", "a b@c.de", "@acme.test", "a@@acme.test"])
def test_invalid_email(env: dict[str, str], email: str) -> None:
    result = create("acme", email)
    assert result.exit_code != 0
    assert "email" in result.output


@pytest.mark.parametrize(
    ("password", "reason"),
    [("short12", "at least 10"), ("onlyletters-here", "letters and digits"), ("1234567890123", "letters and digits")],
)
def test_weak_password(env: dict[str, str], password: str, reason: str) -> None:
    result = create("acme", "admin@acme.test", password)
    assert result.exit_code != 0
    assert reason in result.output


def test_unknown_cell(env: dict[str, str]) -> None:
    result = create("acme", "admin@acme.test", "password-123", "--cell", "mars")
    assert result.exit_code != 0 and "cell" in result.output


def test_keys_rotate_and_list(env: dict[str, str]) -> None:
    first = run("keys", "rotate")
    second = run("keys", "rotate")
    assert first.exit_code == 0 and second.exit_code == 0, first.output
    listed = run("keys", "list")
    assert listed.exit_code == 0
    assert listed.output.count("\n") >= 4


def test_clients_create_then_client_credentials(env: dict[str, str]) -> None:
    from crm_gateway.app import create_app

    assert create().exit_code == 0
    bad_scope = run("clients", "create", "--tenant", "acme", "--name", "erp", "--scope", "bananas:read")
    assert bad_scope.exit_code != 0 and "unknown resource" in bad_scope.output
    result = run("clients", "create", "--tenant", "acme", "--name", "erp", "--scope", "contacts:read")
    assert result.exit_code == 0, result.output
    lines = dict(line.split(maxsplit=1) for line in result.output.splitlines() if line.startswith("client_"))
    app = create_app(load_settings())
    response = app.test_client().post(
        "/api/v1/auth/token",
        json={
            "grant_type": "client_credentials",
            "client_id": lines["client_id"],
            "client_secret": lines["client_secret"],
        },
    )
    assert response.status_code == 200
    assert run("clients", "list", "--tenant", "acme").exit_code == 0
    assert run("clients", "revoke", lines["client_id"]).exit_code == 0
    assert run("clients", "revoke", "crmc_nope").exit_code != 0


def test_migrate_gateway_only(env: dict[str, str]) -> None:
    result = run("migrate", "--gateway-only")
    assert result.exit_code == 0 and "gateway" in result.output
    assert run("migrate", "--gateway-only").exit_code == 0, "idempotent"


def test_deadletters_needs_a_known_service(env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["deadletters", "list", "--service", "billing"])
    assert result.exit_code == 2 and "billing" in result.output


def test_unreachable_database_is_a_clean_error(monkeypatch: pytest.MonkeyPatch, unused_port: Callable[[], int]) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"postgresql://nobody:x@127.0.0.1:{unused_port()}/gateway")
    result = CliRunner().invoke(cli, ["tenants", "list"])
    assert result.exit_code == 1
    assert "cannot reach the gateway database" in result.output
    assert "Traceback" not in result.output


def test_events_ensure_stream(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A server of its own: the shared one already has a stream on crm.events.>, and subjects may not overlap.
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        monkeypatch.setenv("CRM_NATS_URL", server.url)
        monkeypatch.setenv("CRM_EVENTS_STREAM", "CRM_EVENTS_GATEWAY_TEST")
        for _ in range(2):  # creating, then updating in place
            result = run("events", "ensure-stream", "--replicas", "1")
            assert result.exit_code == 0, result.output
            assert "CRM_EVENTS_GATEWAY_TEST ready" in result.output
    finally:
        server.stop()


@pytest.mark.slow
def test_migrate_runs_every_installed_service(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for service in ("customer", "sales", "marketing", "servicedesk", "analytics"):
        monkeypatch.setenv(f"{service.upper()}_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/{service}.db")
        monkeypatch.delenv(f"{service.upper()}_MIGRATION_DATABASE_URL", raising=False)
    result = run("migrate")
    assert result.exit_code == 0, result.output
    for service in ("customer", "sales", "marketing", "servicedesk", "analytics"):
        if (Path(sys.executable).parent / f"crm-{service}").exists():
            assert f"{service} migrated" in result.output
            assert (tmp_path / f"{service}.db").exists()
