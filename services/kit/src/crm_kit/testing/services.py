"""Services running in-process for tests, on the pytest event loop or on a background loop of their own
(for tests that drive the platform synchronously, through the gateway)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from crm_kit.db.migrations import upgrade
from crm_kit.grpc.interceptors import TokenVerifier
from crm_kit.runtime import ServiceRuntime, ServiceSpec
from crm_kit.settings import KitSettings, ServiceSettings
from crm_kit.testing.databases import DatabaseUrls

T = TypeVar("T")


async def start_service(
    spec: ServiceSpec,
    urls: DatabaseUrls,
    *,
    nats_url: str,
    verifier: TokenVerifier | None = None,
    jwks_url: str = "",
) -> ServiceRuntime:
    """Migrate the service's database (as the owner) and start it on a free port (as the app role)."""
    kit = KitSettings(nats_url=nats_url, db_app_role=urls.app_role)
    if jwks_url:
        kit.jwks_url = jwks_url
    # Alembic's env runs its own event loop, so it cannot run on this one.
    await asyncio.to_thread(upgrade, spec.migrations, urls.owner, urls.app_role)
    settings = ServiceSettings(
        database_url=urls.app, migration_database_url=urls.owner, grpc_port=0, shutdown_grace_seconds=1
    )
    runtime = ServiceRuntime(spec, settings, kit, verifier=verifier)
    await runtime.start()
    return runtime


class BackgroundLoop:
    """An event loop in a daemon thread: lets synchronous tests host asyncio services."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="crm-test-services", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
