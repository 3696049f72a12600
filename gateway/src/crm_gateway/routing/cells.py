"""The tenant directory (tenant -> cell) and the long-lived gRPC channels (one per cell and service).

A cell is one set of service endpoints. Every tenant lives in one cell ("default" unless moved), so a large
tenant can be given its own deployment by adding a cell to GATEWAY_CELLS and changing its row: no code change.

Channels are created lazily on first use, then shared by every request and thread of the worker (gRPC
channels are thread safe and multiplex calls over one HTTP/2 connection); they are never opened per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

import grpc
from sqlalchemy import select

from crm_gateway.db import Database
from crm_gateway.models import Tenant
from crm_kit.grpc.channels import open_channel

log = logging.getLogger("crm_gateway.routing")


class UnknownTenant(LookupError):
    pass


class UnknownCell(LookupError):
    pass


class TenantDirectory:
    """Maps a tenant id to its cell, read from the gateway database and cached briefly."""

    def __init__(self, db: Database, *, ttl_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def cell_of(self, tenant_id: str) -> str:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(tenant_id)
        if hit is not None and now - hit[1] < self.ttl_seconds:
            return hit[0]
        with self.db.transaction() as session:
            cell = session.scalar(select(Tenant.cell).where(Tenant.id == tenant_id))
        if cell is None:
            raise UnknownTenant(tenant_id)
        with self._lock:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[tenant_id] = (cell, now)
        return str(cell)

    def forget(self, tenant_id: str) -> None:
        with self._lock:
            self._cache.pop(tenant_id, None)


class ChannelPool:
    """One lazily created, reused channel per (cell, service); thread safe."""

    def __init__(
        self,
        cells: Mapping[str, Mapping[str, str]],
        *,
        factory: Callable[[str], grpc.Channel] | None = None,
    ) -> None:
        self.cells = {name: dict(endpoints) for name, endpoints in cells.items()}
        # Uploads (imports) and downloads (exports) travel as one message.
        self._factory = factory or (lambda target: open_channel(target, large_messages=True))
        self._channels: dict[tuple[str, str], grpc.Channel] = {}
        self._lock = threading.Lock()

    def endpoint(self, cell: str, service: str) -> str:
        try:
            return self.cells[cell][service]
        except KeyError:
            raise UnknownCell(f"no endpoint for service {service!r} in cell {cell!r}") from None

    def channel(self, cell: str, service: str) -> grpc.Channel:
        key = (cell, service)
        channel = self._channels.get(key)
        if channel is not None:
            return channel
        with self._lock:
            channel = self._channels.get(key)
            if channel is None:
                target = self.endpoint(cell, service)
                channel = self._factory(target)
                self._channels[key] = channel
                log.info("opened gRPC channel", extra={"cell": cell, "service": service, "target": target})
            return channel

    def configured(self) -> bool:
        return all(all(ep for ep in endpoints.values()) for endpoints in self.cells.values())

    def open_channels(self) -> int:
        return len(self._channels)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
