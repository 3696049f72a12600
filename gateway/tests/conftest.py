"""Gateway test fixtures: a migrated SQLite database per test, the app, tenants, tokens, and a small real
gRPC server standing in for the services (in-memory storage) until the real services are wired in tests/.

The stand-in verifies the forwarded bearer token against the gateway's JWKS exactly as a service must, and
answers errors through crm_kit.errors, so the gateway's mapping is exercised end to end over real gRPC.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest
from flask import Flask
from flask.testing import FlaskClient
from google.protobuf import empty_pb2
from grpc_status import rpc_status

from crm.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from crm.common.v1 import common_pb2
from crm.customer.v1 import customer_pb2, customer_pb2_grpc
from crm.sales.v1 import sales_pb2, sales_pb2_grpc
from crm_gateway import migrations
from crm_gateway.auth.keys import ensure_key
from crm_gateway.config import SERVICES, Settings, load_settings
from crm_gateway.db import Database
from crm_gateway.runtime import Gateway
from crm_gateway.tenants import create_tenant, create_user
from crm_kit.auth import bearer_token, keys_from_jwks, verify_token
from crm_kit.context import Principal
from crm_kit.db.ids import uuid7
from crm_kit.errors import CrmError, InvalidArgument, NotFound, StaleVersion, Unauthenticated

PASSWORD = "correct-horse-42"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- database, settings, app --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated database file, copied for every test (migrating each time is slow)."""
    path = tmp_path_factory.mktemp("template") / "gateway.db"
    migrations.upgrade(f"sqlite:///{path}")
    db = Database(f"sqlite:///{path}")
    ensure_key(db)  # RSA key generation is slow; every test starts from the same first key
    db.dispose()
    return path


@pytest.fixture
def db_url(tmp_path: Path, migrated_template: Path) -> str:
    target = tmp_path / "data" / "gateway.db"
    target.parent.mkdir(parents=True)
    shutil.copy(migrated_template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def make_settings(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    for var in ("GATEWAY_SIGNING_KEY_FILE", "GATEWAY_CELLS", "GATEWAY_API_KEY_PEPPER"):
        monkeypatch.delenv(var, raising=False)

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": db_url,
            "auth_rate_per_ip": 10_000,
            "auth_rate_per_tenant": 10_000,
            "api_rate_per_ip": 100_000,
            "api_rate_per_tenant": 100_000,
            "grpc_deadline_seconds": 5.0,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    from crm_gateway.app import create_app

    application = create_app(settings)
    yield application
    gateway(application).close()


def gateway(app: Flask) -> Gateway:
    gw: Gateway = app.extensions["crm_gateway"]
    return gw


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@dataclass
class TenantInfo:
    id: str
    slug: str
    admin_email: str
    password: str = PASSWORD


@pytest.fixture
def make_tenant(app: Flask) -> Callable[..., TenantInfo]:
    def make(slug: str = "acme", cell: str = "default") -> TenantInfo:
        created = create_tenant(
            gateway(app).db,
            slug=slug,
            name=f"{slug} 公司",
            admin_email=f"admin@{slug}.test",
            admin_password=PASSWORD,
            cell=cell,
        )
        return TenantInfo(created.tenant.id, slug, created.admin.email)

    return make


@pytest.fixture
def tenant(make_tenant: Callable[..., TenantInfo]) -> TenantInfo:
    return make_tenant("acme")


@pytest.fixture
def login(client: FlaskClient) -> Callable[..., dict[str, Any]]:
    def do(slug: str, email: str, password: str = PASSWORD) -> dict[str, Any]:
        response = client.post("/api/v1/auth/token", json={"tenant": slug, "email": email, "password": password})
        assert response.status_code == 200, response.get_json()
        body: dict[str, Any] = response.get_json()
        return body

    return do


@pytest.fixture
def admin_token(tenant: TenantInfo, login: Callable[..., dict[str, Any]]) -> str:
    token: str = login(tenant.slug, tenant.admin_email)["access_token"]
    return token


@pytest.fixture
def member_token(app: Flask, tenant: TenantInfo, login: Callable[..., dict[str, Any]]) -> str:
    create_user(gateway(app).db, tenant_id=tenant.id, email="member@acme.test", password=PASSWORD, roles=["member"])
    token: str = login(tenant.slug, "member@acme.test")["access_token"]
    return token


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


@pytest.fixture
def auth() -> Callable[..., dict[str, str]]:
    return bearer


# --- a small real gRPC server standing in for the services --------------------------------------------


@dataclass
class FakeServices:
    """In-memory CustomerService (contacts), SalesService.GetPipeline and AnalyticsService.GetSummary."""

    jwks: Callable[[], dict[str, Any]] = field(default=lambda: {"keys": []})
    issuer: str = "crm-gateway"
    audience: str = "crm"
    name: str = "default"
    delay: float = 0.0
    contacts: dict[str, dict[str, customer_pb2.Contact]] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def authenticate(self, method: str, context: grpc.ServicerContext) -> Principal:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self.lock:
            self.calls.append((method, metadata))
        if self.delay:
            time.sleep(self.delay)
        try:
            token = bearer_token(metadata.get("authorization"))
            return verify_token(token, keys_from_jwks(self.jwks()), issuer=self.issuer, audience=self.audience)
        except Unauthenticated as exc:
            abort(context, exc)


def abort(context: grpc.ServicerContext, error: CrmError) -> NoReturn:
    context.abort_with_status(rpc_status.to_status(error.to_status()))
    raise AssertionError("abort_with_status raises")


def _apply_mask(target: Any, source: Any, paths: list[str]) -> None:
    for path in paths:
        value = getattr(source, path)
        if hasattr(value, "extend"):
            del getattr(target, path)[:]
            getattr(target, path).extend(value)
        else:
            setattr(target, path, value)


class CustomerServicer(customer_pb2_grpc.CustomerServiceServicer):
    def __init__(self, fake: FakeServices) -> None:
        self.fake = fake

    def _store(self, principal: Principal) -> dict[str, customer_pb2.Contact]:
        return self.fake.contacts.setdefault(principal.tenant_id, {})

    def CreateContact(self, request: Any, context: grpc.ServicerContext) -> customer_pb2.Contact:
        p = self.fake.authenticate("CreateContact", context)
        c = request.contact
        if c.email and "@" not in c.email:
            abort(context, InvalidArgument.field("contact.email", "not an email address"))
        created = customer_pb2.Contact()
        created.CopyFrom(c)
        created.id = uuid7()
        created.version = 1
        created.owner_id = created.owner_id or p.subject
        created.create_time.GetCurrentTime()
        created.update_time.CopyFrom(created.create_time)
        self._store(p)[created.id] = created
        return created

    def GetContact(self, request: Any, context: grpc.ServicerContext) -> customer_pb2.Contact:
        p = self.fake.authenticate("GetContact", context)
        found = self._store(p).get(request.id)
        if found is None:
            abort(context, NotFound("contact", request.id))
        return found

    def UpdateContact(self, request: Any, context: grpc.ServicerContext) -> customer_pb2.Contact:
        p = self.fake.authenticate("UpdateContact", context)
        stored = self._store(p).get(request.contact.id)
        if stored is None:
            abort(context, NotFound("contact", request.contact.id))
        if request.contact.version and request.contact.version != stored.version:
            abort(context, StaleVersion(request.contact.version, stored.version))
        _apply_mask(stored, request.contact, list(request.update_mask.paths))
        stored.version += 1
        stored.update_time.GetCurrentTime()
        return stored

    def DeleteContact(self, request: Any, context: grpc.ServicerContext) -> empty_pb2.Empty:
        p = self.fake.authenticate("DeleteContact", context)
        stored = self._store(p).get(request.id)
        if stored is None:
            abort(context, NotFound("contact", request.id))
        if request.version and request.version != stored.version:
            abort(context, StaleVersion(request.version, stored.version))
        del self._store(p)[request.id]
        return empty_pb2.Empty()

    def ListContacts(self, request: Any, context: grpc.ServicerContext) -> customer_pb2.ListContactsResponse:
        p = self.fake.authenticate("ListContacts", context)
        size = request.page_size or 50
        if not 1 <= size <= 500:
            abort(context, InvalidArgument.field("page_size", "must be between 1 and 500"))
        items = sorted(self._store(p).values(), key=lambda c: c.id)
        if request.tag:
            items = [c for c in items if request.tag in c.tags]
        if request.owner_id:
            items = [c for c in items if c.owner_id == request.owner_id]
        start = int(request.page_token or 0)
        page = items[start : start + size]
        more = start + size < len(items)
        return customer_pb2.ListContactsResponse(contacts=page, next_page_token=str(start + size) if more else "")


class SalesServicer(sales_pb2_grpc.SalesServiceServicer):
    def __init__(self, fake: FakeServices) -> None:
        self.fake = fake

    def GetPipeline(self, request: Any, context: grpc.ServicerContext) -> sales_pb2.Pipeline:
        self.fake.authenticate("GetPipeline", context)
        return sales_pb2.Pipeline(
            name=f"销售管道 {self.fake.name}",
            stages=[
                sales_pb2.PipelineStage(key="lead", name="线索", probability=10),
                sales_pb2.PipelineStage(key="won", name="赢单", probability=100, is_won=True),
            ],
        )


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, fake: FakeServices) -> None:
        self.fake = fake

    def GetSummary(self, request: Any, context: grpc.ServicerContext) -> analytics_pb2.Summary:
        self.fake.authenticate("GetSummary", context)
        return analytics_pb2.Summary(
            contact_count=2,
            campaigns_by_status=[common_pb2.CountBucket(key="draft", count=1)],
        )


@dataclass
class RunningFake:
    fake: FakeServices
    port: int
    server: grpc.Server

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def endpoints(self) -> dict[str, str]:
        return {f"{svc}_addr": self.addr for svc in SERVICES}


@pytest.fixture
def start_fake() -> Iterator[Callable[..., RunningFake]]:
    servers: list[grpc.Server] = []

    def start(
        name: str = "default",
        handlers: Callable[[FakeServices], Sequence[grpc.GenericRpcHandler]] | None = None,
    ) -> RunningFake:
        fake = FakeServices(name=name)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        if handlers is not None:  # extra stand-in services, e.g. built from test-only descriptors
            server.add_generic_rpc_handlers(tuple(handlers(fake)))
        customer_pb2_grpc.add_CustomerServiceServicer_to_server(CustomerServicer(fake), server)
        sales_pb2_grpc.add_SalesServiceServicer_to_server(SalesServicer(fake), server)
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(AnalyticsServicer(fake), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return RunningFake(fake, port, server)

    yield start
    for server in servers:
        server.stop(grace=None)


@pytest.fixture
def services(start_fake: Callable[..., RunningFake]) -> RunningFake:
    return start_fake()


@pytest.fixture
def wired(app: Flask, services: RunningFake) -> RunningFake:
    """The stand-in services, trusting this app's JWKS (use with a `settings` pointing at them)."""
    services.fake.jwks = gateway(app).keys.jwks
    return services


@pytest.fixture
def gw(app: Flask) -> Gateway:
    return gateway(app)


@pytest.fixture
def unused_port() -> Callable[[], int]:
    return free_port
