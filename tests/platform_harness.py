"""The whole platform in one test process: five services on a background event loop, the gateway on a
real HTTP port (werkzeug, threaded), a real nats-server, and real databases (SQLite, or PostgreSQL when
configured). Tests drive it through REST as a user would, or through gRPC as an integrator would."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from click.testing import CliRunner

from crm_analytics.app import SPEC as ANALYTICS
from crm_customer.app import SPEC as CUSTOMER
from crm_gateway.cli import cli as crmctl
from crm_gateway.testing import PASSWORD, serve
from crm_kit.grpc.channels import open_channel
from crm_kit.runtime import ServiceRuntime, ServiceSpec
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.services import BackgroundLoop, start_service
from crm_marketing.app import SPEC as MARKETING
from crm_sales.app import SPEC as SALES
from crm_servicedesk.app import SPEC as SERVICEDESK

SPECS: tuple[ServiceSpec, ...] = (CUSTOMER, SALES, MARKETING, SERVICEDESK, ANALYTICS)



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tenant:
    slug: str
    email: str
    token: str = ""
    tenant_id: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


@dataclass
class Platform:
    nats_url: str
    databases: DatabaseFactory
    tmp: Path
    loop: BackgroundLoop = field(default_factory=BackgroundLoop)
    runtimes: dict[str, ServiceRuntime] = field(default_factory=dict)
    gateway_url: str = ""
    gateway_env: dict[str, str] = field(default_factory=dict)
    _gateway: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def start(self, monkeypatch: Any) -> None:
        gateway_port = free_port()
        self.gateway_url = f"http://127.0.0.1:{gateway_port}"
        jwks = f"{self.gateway_url}/.well-known/jwks.json"
        for spec in SPECS:
            if spec.name == "sales":
                # Sales checks unknown contacts with the customer service.
                monkeypatch.setenv("SALES_CUSTOMER_ADDR", f"127.0.0.1:{self.runtimes['customer'].port}")
            if spec.name == "servicedesk":
                monkeypatch.setenv("SERVICEDESK_CUSTOMER_ADDR", f"127.0.0.1:{self.runtimes['customer'].port}")
            urls = self.databases.create(spec.name)
            self.runtimes[spec.name] = self.loop.run(start_service(spec, urls, nats_url=self.nats_url, jwks_url=jwks))
        env = {
            "GATEWAY_DATABASE_URL": f"sqlite:///{self.tmp / 'gateway.db'}",
            "CRM_NATS_URL": self.nats_url,
            **{f"GATEWAY_{name.upper()}_ADDR": f"127.0.0.1:{rt.port}" for name, rt in self.runtimes.items()},
        }
        self.gateway_env = env
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        self.app = self._gateway.enter_context(serve(self.gateway_url, env)).app

    def crmctl(self, *args: str) -> Any:
        return CliRunner().invoke(crmctl, list(args), env=self.gateway_env, catch_exceptions=False)

    def create_tenant(self, slug: str) -> Tenant:
        email = f"admin@{slug}.example.com"
        result = self.crmctl("tenants", "create", slug, "--admin-email", email, "--admin-password", PASSWORD)
        assert result.exit_code == 0, result.output
        tenant = Tenant(slug=slug, email=email)
        self.login(tenant)
        return tenant

    def login(self, tenant: Tenant) -> None:
        r = httpx.post(
            f"{self.gateway_url}/api/v1/auth/token",
            json={"tenant": tenant.slug, "email": tenant.email, "password": PASSWORD},
        )
        assert r.status_code == 200, r.text
        tenant.token = r.json()["access_token"]
        import jwt

        tenant.tenant_id = jwt.decode(tenant.token, options={"verify_signature": False})["tid"]

    def http(self, tenant: Tenant | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.gateway_url, headers=tenant.headers if tenant else {}, timeout=20)

    def channel(self, service: str) -> grpc.Channel:
        if service not in self._channels:
            self._channels[service] = open_channel(f"127.0.0.1:{self.runtimes[service].port}")
        return self._channels[service]

    def stop(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._gateway.close()
        for rt in reversed(list(self.runtimes.values())):
            with contextlib.suppress(Exception):  # best effort during teardown
                self.loop.run(rt.stop(), timeout=30)
        self.loop.close()


def eventually(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1) -> Any:
    """Poll until `check` returns a truthy value (events are asynchronous); fail with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")
