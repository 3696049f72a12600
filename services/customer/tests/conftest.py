"""The customer service behind the real gateway, for the REST tests of this service."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crm_customer.app import SPEC as CUSTOMER
from crm_gateway.testing import Gateway, serve
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.nats import free_port
from crm_kit.testing.services import BackgroundLoop, start_service


@pytest.fixture(scope="module")
def gateway(
    nats_url: str, database_factory: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The customer service on a background loop and the real gateway on an HTTP port in front of it."""
    loop = BackgroundLoop()
    url = f"http://127.0.0.1:{free_port()}"
    runtime = loop.run(
        start_service(
            CUSTOMER,
            database_factory.create("customer-rest"),
            nats_url=nats_url,
            jwks_url=f"{url}/.well-known/jwks.json",
        )
    )
    env = {
        "GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('gateway') / 'gateway.db'}",
        "CRM_NATS_URL": nats_url,
        "GATEWAY_CUSTOMER_ADDR": f"127.0.0.1:{runtime.port}",
    }
    try:
        with serve(url, env) as gw:
            yield gw
    finally:
        loop.run(runtime.stop(), timeout=30)
        loop.close()
