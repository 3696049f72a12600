"""`crmctl contacts import` through click's CliRunner against a real gateway database and a real customer
service (SQLite) that verifies the CLI's token with the gateway's signing keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from crm_customer.app import SPEC
from crm_gateway import migrations
from crm_gateway.auth.keys import KeyStore, ensure_key
from crm_gateway.cli import cli
from crm_gateway.db import Database
from crm_gateway.tenants import create_tenant
from crm_kit.auth import StaticKeyVerifier
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.services import BackgroundLoop, start_service
from crm_kit.testing.tokens import AUDIENCE, ISSUER


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory, sqlite_databases: DatabaseFactory, nats_url: str
) -> Iterator[dict[str, str]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('gw')}/gateway.db"
    migrations.upgrade(url, "")
    db = Database(url)
    ensure_key(db)
    create_tenant(
        db, slug="acme", name=None, admin_email="admin@acme.test", admin_password="password-123", cell="default"
    )
    create_tenant(
        db, slug="other", name=None, admin_email="admin@other.test", admin_password="password-123", cell="default"
    )
    verifier = StaticKeyVerifier(KeyStore(db).verification_keys(), issuer=ISSUER, audience=AUDIENCE)
    db.dispose()
    loop = BackgroundLoop()
    rt: ServiceRuntime = loop.run(
        start_service(SPEC, sqlite_databases.create("cli_import"), nats_url=nats_url, verifier=verifier)
    )
    yield {"GATEWAY_DATABASE_URL": url, "GATEWAY_CUSTOMER_ADDR": f"127.0.0.1:{rt.port}"}
    loop.run(rt.stop())
    loop.close()


@pytest.fixture
def env(platform: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for var in ("GATEWAY_SIGNING_KEY_FILE", "GATEWAY_CELLS", "GATEWAY_MIGRATION_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    for key, value in platform.items():
        monkeypatch.setenv(key, value)
    return platform


def crmctl(*args: str) -> Result:
    return CliRunner().invoke(cli, ["contacts", "import", *args], catch_exceptions=False)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def test_dry_run_exits_non_zero_on_problems_then_imports(env: dict[str, str], tmp_path: Path) -> None:
    good = (
        "external_id,first_name,last_name,email,phone,tags\ncli-1,Ada,Lovelace,ada@example.com,13800138000,vip;展会\n"
    )
    bad = good + "cli-2,,,not-an-email,,\n"
    path = write(tmp_path / "contacts.csv", bad)
    dry = crmctl(str(path), "--tenant", "acme", "--dry-run")
    assert dry.exit_code == 1, dry.output
    assert "completed_with_errors" in dry.output and "dry run" in dry.output
    assert "not-an-email" in dry.output and "100%" in dry.output  # the problems table and the progress bar

    clean = write(tmp_path / "clean.csv", good)
    checked = crmctl(str(clean), "--tenant", "acme", "--dry-run")
    assert checked.exit_code == 0, checked.output
    assert "would be created 1" in checked.output

    first = crmctl(str(clean), "--tenant", "acme")
    assert first.exit_code == 0, first.output
    assert "succeeded" in first.output and "created 1" in first.output
    again = crmctl(str(clean), "--tenant", "acme")
    assert again.exit_code == 0 and "created 0" in again.output and "unchanged 1" in again.output
    # Another tenant with the same external id gets its own contact.
    other = crmctl(str(clean), "--tenant", "other")
    assert other.exit_code == 0 and "created 1" in other.output


def test_mapping_file_and_errors(env: dict[str, str], tmp_path: Path) -> None:
    data = write(tmp_path / "客户.csv", "编号,姓名,手机\nzh-1,张伟,13900139000\n", encoding="gb18030")
    mapping = write(tmp_path / "mapping.txt", "编号: external_id\n姓名: name\n")
    result = crmctl(str(data), "--tenant", "acme", "--mapping", str(mapping))
    assert result.exit_code == 0, result.output
    assert "created 1" in result.output

    unknown = crmctl(str(data), "--tenant", "acme")
    assert unknown.exit_code == 1 and "unknown column" in unknown.output

    missing = crmctl(str(data), "--tenant", "nope")
    assert missing.exit_code != 0 and "no tenant 'nope'" in missing.output


def export(*args: str) -> Result:
    return CliRunner().invoke(cli, ["contacts", "export", *args], catch_exceptions=False)


def test_export_a_filtered_list_as_csv_and_xlsx(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = "external_id,first_name,last_name,email,tags\n" + "".join(
        f"exp-{i},Name{i},导出{i},exp{i}@example.com,{'cli-export' if i % 2 else 'cli-other'}\n" for i in range(6)
    )
    assert crmctl(str(write(tmp_path / "exp.csv", rows)), "--tenant", "acme").exit_code == 0
    out = tmp_path / "tagged.csv"
    result = export("--tenant", "acme", "--tag", "cli-export", "--order-by", "external_id", "-o", str(out))
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8-sig").splitlines()
    assert lines[0].startswith("id,") and "external_id" in lines[0].split(",")
    assert [line.split(",")[lines[0].split(",").index("external_id")] for line in lines[1:]] == [
        "exp-1",
        "exp-3",
        "exp-5",
    ]
    assert "导出1" in lines[1]

    openpyxl = pytest.importorskip("openpyxl")
    xlsx = tmp_path / "tagged.xlsx"
    assert export("--tenant", "acme", "--tag", "cli-export", "--format", "xlsx", "-o", str(xlsx)).exit_code == 0
    sheet = openpyxl.load_workbook(xlsx).active
    assert sheet.max_row == 4  # the header and three contacts

    # Without -o the file takes the service's name, in the current directory; - writes to stdout.
    monkeypatch.chdir(tmp_path)
    named = export("--tenant", "acme", "--tag", "cli-export")
    assert named.exit_code == 0 and "wrote " in named.output
    assert export("--tenant", "acme", "-q", "exp4@example.com", "-o", "-").output.count("exp-4") == 1

    # Another tenant's export never holds them.
    assert "exp-" not in export("--tenant", "other", "--tag", "cli-export", "-o", "-").output
    # A bad filter names the field and exits non-zero, writing nothing.
    bad = export("--tenant", "acme", "--classification", "vip", "-o", str(tmp_path / "bad.csv"))
    assert bad.exit_code != 0 and "classification" in bad.output
    assert not (tmp_path / "bad.csv").exists()
