"""Configuration fails fast with messages naming the variable."""

from __future__ import annotations

import pytest

from crm_gateway.config import load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GATEWAY_DATABASE_URL", "GATEWAY_CELLS", "GATEWAY_CUSTOMER_ADDR", "GATEWAY_PORT"):
        monkeypatch.delenv(var, raising=False)
    settings = load_settings()
    gw = settings.gateway
    assert gw.database_url == "sqlite:///var/data/gateway.db"
    assert gw.port == 8080 and gw.workers == 2
    assert gw.cell_endpoints()["default"] == {
        "customer": "127.0.0.1:50051",
        "sales": "127.0.0.1:50052",
        "marketing": "127.0.0.1:50053",
        "servicedesk": "127.0.0.1:50054",
        "analytics": "127.0.0.1:50055",
    }


def test_cells_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    cell = {s: f"big-{s}:50051" for s in ("customer", "sales", "marketing", "servicedesk", "analytics")}
    import json

    monkeypatch.setenv("GATEWAY_CELLS", json.dumps({"big": cell}))
    assert load_settings().gateway.cell_endpoints()["big"] == cell


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("GATEWAY_CELLS", "{not json"),
        ("GATEWAY_CELLS", '{"big": {"customer": "h:1"}}'),
        ("GATEWAY_CELLS", '{"default": {}}'),
        ("GATEWAY_CUSTOMER_ADDR", "no-port"),
        ("GATEWAY_PORT", "eighty"),
        ("GATEWAY_DATABASE_URL", "mysql://x/y"),
        ("GATEWAY_API_KEY_PEPPER", "short"),
        ("GATEWAY_SIGNING_KEY_FILE", "/does/not/exist.pem"),
    ],
)
def test_bad_values_stop_with_the_variable_named(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as excinfo:
        load_settings()
    assert var in str(excinfo.value)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg"])
def test_postgres_urls_use_psycopg(monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"{scheme}://crm:p%40ss@db:5432/gateway")
    settings = load_settings().gateway
    assert settings.database_url == "postgresql+psycopg://crm:p%40ss@db:5432/gateway"
    assert settings.migration_database_url == settings.database_url
