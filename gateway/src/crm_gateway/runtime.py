"""The gateway's long-lived parts, built once per worker and shared by every request."""

from __future__ import annotations

from datetime import timedelta

from flask import current_app

from crm_gateway.auth.api_clients import resolve_pepper
from crm_gateway.auth.grants import Grants
from crm_gateway.auth.keys import KeyStore
from crm_gateway.auth.ratelimit import RateLimiter
from crm_gateway.auth.tokens import TokenService
from crm_gateway.config import Settings
from crm_gateway.db import Database
from crm_gateway.routing.cells import ChannelPool, TenantDirectory
from crm_gateway.routing.upstream import Upstream

EXTENSION = "crm_gateway"


class Gateway:
    def __init__(self, settings: Settings) -> None:
        gw = settings.gateway
        self.settings = settings
        self.db = Database(gw.database_url)
        self.keys = KeyStore(self.db, key_file=gw.signing_key_file, cache_seconds=gw.key_cache_seconds)
        self.tokens = TokenService(
            self.keys,
            issuer=settings.kit.jwt_issuer,
            audience=settings.kit.jwt_audience,
            ttl_seconds=gw.access_token_ttl_seconds,
        )
        self._pepper: bytes | None = None
        self.directory = TenantDirectory(self.db)
        self.pool = ChannelPool(gw.cell_endpoints())
        self.upstream = Upstream(self.pool, self.directory, deadline_seconds=gw.grpc_deadline_seconds)
        window = gw.rate_window_seconds
        self.auth_ip_limit = RateLimiter(gw.auth_rate_per_ip, window)
        self.auth_tenant_limit = RateLimiter(gw.auth_rate_per_tenant, window)
        self.api_ip_limit = RateLimiter(gw.api_rate_per_ip, window)
        self.api_tenant_limit = RateLimiter(gw.api_rate_per_tenant, window)

    @property
    def pepper(self) -> bytes:
        if self._pepper is None:
            configured = self.settings.gateway.api_key_pepper
            self._pepper = resolve_pepper(self.db, configured.get_secret_value() if configured else None)
        return self._pepper

    @property
    def grants(self) -> Grants:
        return Grants(
            self.db,
            self.tokens,
            refresh_ttl=timedelta(seconds=self.settings.gateway.refresh_token_ttl_seconds),
            pepper=self.pepper,
        )

    def close(self) -> None:
        self.pool.close()
        self.db.dispose()


def current_gateway() -> Gateway:
    gateway: Gateway = current_app.extensions[EXTENSION]
    return gateway
