"""Configuration from the environment (12-factor), failing fast with messages that name the variable.

Shared settings use the CRM_ prefix; each process has its own prefix (CUSTOMER_, GATEWAY_, ...).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DATA_DIR = Path("var/data")


class KitSettings(BaseSettings):
    """Settings every process shares."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    events_stream: str = "CRM_EVENTS"
    jwks_url: str = "http://127.0.0.1:8080/.well-known/jwks.json"
    jwt_issuer: str = "crm-gateway"
    jwt_audience: str = "crm"
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    db_app_role: str = "crm_app"

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, value: str) -> str:
        for server in value.split(","):
            if not server.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError("must be nats://host:port (comma separated for several servers)")
        return value

    @property
    def nats_servers(self) -> list[str]:
        return [s.strip() for s in self.nats_url.split(",") if s.strip()]


class ServiceSettings(BaseSettings):
    """Settings of one gRPC service; the env prefix is the service name (see `service_settings`)."""

    model_config = SettingsConfigDict(extra="ignore")

    database_url: str = ""
    migration_database_url: str = ""
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=0, ge=0, le=65535)
    metrics_port: int = Field(default=0, ge=0, le=65535)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)

    @field_validator("database_url", "migration_database_url")
    @classmethod
    def _db_scheme(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite+aiosqlite:// or postgresql+asyncpg:// URL")
        return value


S = TypeVar("S", bound=BaseSettings)


def env_prefix(process: str) -> str:
    return process.upper().replace("-", "_") + "_"


def load(cls: type[S], **overrides: Any) -> S:
    """Instantiate settings, turning validation errors into one clear fatal message."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = [f"invalid configuration for {cls.__name__}:"]
        for err in exc.errors():
            name = prefix + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"  {name}: {err['msg']}")
        raise SystemExit("\n".join(lines)) from None


def service_settings(service: str, default_grpc_port: int, **overrides: Any) -> ServiceSettings:
    prefix = env_prefix(service)
    cls = type(
        f"{service.title()}Settings",
        (ServiceSettings,),
        {"model_config": SettingsConfigDict(env_prefix=prefix, extra="ignore")},
    )
    settings: ServiceSettings = load(cls, **overrides)
    if not settings.database_url:
        settings.database_url = f"sqlite+aiosqlite:///{DATA_DIR / (service + '.db')}"
    if not settings.migration_database_url:
        settings.migration_database_url = settings.database_url
    if settings.grpc_port == 0 and "grpc_port" not in overrides:
        settings.grpc_port = default_grpc_port
    return settings


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)
