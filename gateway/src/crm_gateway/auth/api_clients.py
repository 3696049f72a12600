"""API clients (integrators): client_id + secret, the secret stored as HMAC-SHA256 with a pepper.

The secret is a prefix plus 32 random bytes, shown once. The pepper comes from GATEWAY_API_KEY_PEPPER; when
it is unset (development), one is generated and kept in the gateway database.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from crm_gateway.db import Database
from crm_gateway.models import ROLES, ApiClient, GatewaySecret, utcnow
from crm_kit.db.ids import uuid7

log = logging.getLogger("crm_gateway.auth")

CLIENT_ID_PREFIX = "crmc_"
SECRET_PREFIX = "crms_"
PEPPER_SECRET_NAME = "api_key_pepper"
_SCOPE = re.compile(r"^[a-z][a-z0-9_-]*:(read|write)$")


class ApiClientError(ValueError):
    """Invalid input when creating an API client."""


@dataclass(frozen=True)
class NewClient:
    client: ApiClient
    secret: str


def resolve_pepper(db: Database, configured: str | None) -> bytes:
    """The configured pepper, or the generated one stored in the database (created on first use)."""
    if configured:
        return configured.encode()
    with db.transaction() as session:
        row = session.get(GatewaySecret, PEPPER_SECRET_NAME)
        if row is not None:
            return row.value.encode()
    value = secrets.token_urlsafe(32)
    try:
        with db.transaction() as session:
            session.add(GatewaySecret(name=PEPPER_SECRET_NAME, value=value, created_at=utcnow()))
        if db.dialect != "sqlite":
            log.warning("GATEWAY_API_KEY_PEPPER is not set; generated one and stored it in the gateway DB")
    except IntegrityError:
        pass  # another process generated it first
    with db.transaction() as session:
        row = session.get(GatewaySecret, PEPPER_SECRET_NAME)
        assert row is not None
        return row.value.encode()


def secret_hash(pepper: bytes, secret: str) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def check_scopes(scopes: Sequence[str], known: Sequence[str]) -> list[str]:
    cleaned: list[str] = []
    for scope in scopes:
        if not _SCOPE.match(scope):
            raise ApiClientError(f"scope {scope!r} must look like <resource>:read or <resource>:write")
        if known and scope.split(":")[0] not in known:
            raise ApiClientError(f"unknown resource in scope {scope!r}; known: {', '.join(sorted(known))}")
        if scope not in cleaned:
            cleaned.append(scope)
    return cleaned


def create(
    db: Database,
    pepper: bytes,
    *,
    tenant_id: str,
    name: str,
    roles: Sequence[str],
    scopes: Sequence[str],
    expires_at: datetime | None,
) -> NewClient:
    if not name.strip():
        raise ApiClientError("name must not be empty")
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise ApiClientError(f"roles must be some of {', '.join(ROLES)}")
    if not scopes:
        raise ApiClientError("an API client needs at least one scope")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    client = ApiClient(
        id=uuid7(),
        client_id=CLIENT_ID_PREFIX + secrets.token_hex(12),
        tenant_id=tenant_id,
        name=name.strip(),
        secret_hash=secret_hash(pepper, secret),
        roles=list(dict.fromkeys(roles)),
        scopes=list(scopes),
        created_at=utcnow(),
        expires_at=expires_at,
    )
    with db.transaction() as session:
        session.add(client)
    return NewClient(client=client, secret=secret)


def authenticate(db: Database, pepper: bytes, client_id: str, secret: str) -> ApiClient | None:
    """The client if the secret matches and it is usable; None otherwise (constant-time compare)."""
    presented = secret_hash(pepper, secret)
    now = utcnow()
    with db.transaction() as session:
        client = session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))
        # Compare even when the client is unknown, so timing does not reveal which client ids exist.
        stored = client.secret_hash if client is not None else "0" * 64
        matches = hmac.compare_digest(stored, presented)
        if client is None or not matches:
            return None
        if client.revoked_at is not None or (client.expires_at is not None and client.expires_at <= now):
            return None
        client.last_used_at = now
        return client


def revoke(db: Database, client_id: str) -> bool:
    with db.transaction() as session:
        client = session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))
        if client is None:
            return False
        if client.revoked_at is None:
            client.revoked_at = utcnow()
        return True


def list_clients(db: Database, tenant_id: str | None = None) -> list[ApiClient]:
    with db.transaction() as session:
        query = select(ApiClient).order_by(ApiClient.id)
        if tenant_id is not None:
            query = query.where(ApiClient.tenant_id == tenant_id)
        return list(session.scalars(query))
