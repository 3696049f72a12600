"""Gateway configuration: the shared CRM_ settings plus the GATEWAY_ ones, validated at start.

Malformed values stop the process with a message naming the variable (``crm_kit.settings.load``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from crm_kit.settings import DATA_DIR, KitSettings, load

# The services every cell consists of, in the order of their default local ports (50051..50055).
SERVICES: tuple[str, ...] = ("customer", "sales", "marketing", "servicedesk", "analytics")
DEFAULT_CELL = "default"
MAX_BODY_BYTES = 1024 * 1024

_ADDR = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$|^(unix|dns|ipv4|ipv6):.+$")
_CELL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def normalize_database_url(url: str) -> str:
    """Accept plain URLs from operators and pick the sync drivers the gateway runs on."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres"):
        # The gateway is synchronous (psycopg 3), whatever driver a URL shared with the services names.
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError("must be a sqlite:///path or postgresql+psycopg:// URL")


def _check_addr(value: str) -> str:
    value = value.strip()
    if not _ADDR.match(value):
        raise ValueError(f"{value!r} is not host:port")
    return value


class GatewaySettings(BaseSettings):
    """Settings of the gateway process (GATEWAY_ prefix)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    database_url: str = f"sqlite:///{DATA_DIR / 'gateway.db'}"
    # Owner role used by `migrate`; defaults to database_url.
    migration_database_url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=2, ge=1, le=64)
    threads: int = Field(default=4, ge=1, le=64)
    metrics_port: int = Field(default=0, ge=0, le=65535)
    graceful_timeout_seconds: int = Field(default=30, ge=1)
    # Number of reverse proxies in front of the gateway whose X-Forwarded-For is trusted (0 = none).
    trusted_proxies: int = Field(default=0, ge=0, le=5)

    signing_key_file: Path | None = None
    api_key_pepper: SecretStr | None = None
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=3600)
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=3600)
    # How long a superseded signing key stays published after a rotation (must exceed the access TTL).
    key_retire_after_seconds: int = Field(default=3600, ge=60)
    # How often a worker re-reads signing keys from the database (rotation done by another process).
    key_cache_seconds: float = Field(default=30.0, ge=0)

    customer_addr: str = "127.0.0.1:50051"
    sales_addr: str = "127.0.0.1:50052"
    marketing_addr: str = "127.0.0.1:50053"
    servicedesk_addr: str = "127.0.0.1:50054"
    analytics_addr: str = "127.0.0.1:50055"
    # Additional cells: {"cellname": {"customer": "host:port", "sales": ..., ...}} (every service).
    # NoDecode: parsed by _cells_json below, so malformed JSON is a validation error naming GATEWAY_CELLS.
    cells: Annotated[dict[str, dict[str, str]], NoDecode] = Field(default_factory=dict)
    grpc_deadline_seconds: float = Field(default=10.0, gt=0, le=300)
    # Body limit of upload routes (imports); every other route takes at most MAX_BODY_BYTES.
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, ge=MAX_BODY_BYTES, le=2 * 1024**3)

    # Rate limits: requests per window, in memory per worker process.
    auth_rate_per_ip: int = Field(default=20, ge=1)
    auth_rate_per_tenant: int = Field(default=60, ge=1)
    api_rate_per_ip: int = Field(default=1200, ge=1)
    api_rate_per_tenant: int = Field(default=6000, ge=1)
    rate_window_seconds: float = Field(default=60.0, gt=0)

    @field_validator("database_url", "migration_database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        return normalize_database_url(value) if value else value

    @field_validator("customer_addr", "sales_addr", "marketing_addr", "servicedesk_addr", "analytics_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        return _check_addr(value)

    @field_validator("cells", mode="before")
    @classmethod
    def _cells_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f'must be JSON like {{"cell": {{"customer": "host:port", ...}}}}: {exc}') from None
        return value

    @field_validator("cells")
    @classmethod
    def _cells(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        checked: dict[str, dict[str, str]] = {}
        for name, endpoints in value.items():
            if name == DEFAULT_CELL:
                raise ValueError("the default cell is configured with GATEWAY_<SERVICE>_ADDR")
            if not _CELL_NAME.match(name):
                raise ValueError(f"cell name {name!r} must match [a-z0-9-]")
            unknown = set(endpoints) - set(SERVICES)
            missing = set(SERVICES) - set(endpoints)
            if unknown:
                raise ValueError(f"cell {name!r}: unknown services {sorted(unknown)}")
            if missing:
                raise ValueError(f"cell {name!r}: missing endpoints for {sorted(missing)}")
            checked[name] = {svc: _check_addr(addr) for svc, addr in endpoints.items()}
        return checked

    @field_validator("api_key_pepper")
    @classmethod
    def _pepper(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("signing_key_file")
    @classmethod
    def _key_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> GatewaySettings:
        if not self.migration_database_url:
            self.migration_database_url = self.database_url
        if self.key_retire_after_seconds <= self.access_token_ttl_seconds:
            raise ValueError("key_retire_after_seconds must be longer than access_token_ttl_seconds")
        return self

    def cell_endpoints(self) -> dict[str, dict[str, str]]:
        """Every configured cell with its service endpoints, the default cell included."""
        default = {svc: str(getattr(self, f"{svc}_addr")) for svc in SERVICES}
        return {DEFAULT_CELL: default, **self.cells}


@dataclass(frozen=True)
class Settings:
    """Everything the gateway reads from the environment."""

    gateway: GatewaySettings
    kit: KitSettings = field(default_factory=KitSettings)


def load_settings(**gateway_overrides: Any) -> Settings:
    """Read CRM_ and GATEWAY_ variables; keyword arguments override GATEWAY_ settings (tests)."""
    return Settings(gateway=load(GatewaySettings, **gateway_overrides), kit=load(KitSettings))
