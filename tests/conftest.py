from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_kit.testing.databases import DatabaseFactory
from tests.platform_harness import Platform, Tenant


@pytest.fixture(scope="module")
def platform(
    nats_url: str, database_factory: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """The whole platform, once per test module and database backend."""
    mp = pytest.MonkeyPatch()
    p = Platform(nats_url=nats_url, databases=database_factory, tmp=Path(tmp_path_factory.mktemp("platform")))
    try:
        p.start(mp)
        yield p
    finally:
        p.stop()
        mp.undo()


@pytest.fixture(scope="module")
def tenant_a(platform: Platform) -> Tenant:
    return platform.create_tenant("acme")


@pytest.fixture(scope="module")
def tenant_b(platform: Platform) -> Tenant:
    return platform.create_tenant("globex")
