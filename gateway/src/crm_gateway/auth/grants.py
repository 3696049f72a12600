"""The token endpoint's grants: password (people), refresh_token (rotation), client_credentials (integrators).

Every failure raises InvalidGrant with one message per grant type, so a caller cannot tell an unknown
tenant from an unknown user or a wrong password.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from crm_gateway.auth import api_clients, refresh_tokens
from crm_gateway.auth.passwords import hash_password, needs_rehash, verify_password
from crm_gateway.auth.tokens import TokenService
from crm_gateway.db import Database
from crm_gateway.models import Tenant, User

BAD_CREDENTIALS = "invalid tenant, email or password"
BAD_REFRESH = "invalid or expired refresh token"
BAD_CLIENT = "invalid client credentials"


class InvalidGrant(Exception):
    pass


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    expires_in: int
    refresh_token: str | None = None

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        return body


class Grants:
    def __init__(self, db: Database, tokens: TokenService, *, refresh_ttl: timedelta, pepper: bytes) -> None:
        self.db = db
        self.tokens = tokens
        self.refresh_ttl = refresh_ttl
        self.pepper = pepper

    def _user_token(self, user: User, tenant: Tenant) -> str:
        return self.tokens.issue(subject=user.id, tenant_id=tenant.id, tenant_slug=tenant.slug, roles=list(user.roles))

    def password(self, tenant_slug: str, email: str, password: str) -> TokenResponse:
        email = email.strip().lower()
        with self.db.transaction() as session:
            row = session.execute(
                select(User, Tenant)
                .join(Tenant, Tenant.id == User.tenant_id)
                .where(Tenant.slug == tenant_slug, User.email == email)
            ).first()
            user, tenant = (row[0], row[1]) if row is not None else (None, None)
            ok = verify_password(user.password_hash if user is not None else None, password)
            if user is None or tenant is None or not ok or not user.is_active:
                raise InvalidGrant(BAD_CREDENTIALS)
            if needs_rehash(user.password_hash):
                user.password_hash = hash_password(password)
        access = self._user_token(user, tenant)
        refresh = refresh_tokens.issue(self.db, user_id=user.id, tenant_id=tenant.id, ttl=self.refresh_ttl)
        return TokenResponse(access, self.tokens.ttl_seconds, refresh)

    def refresh(self, token: str) -> TokenResponse:
        try:
            rotated = refresh_tokens.rotate(self.db, token, ttl=self.refresh_ttl)
        except refresh_tokens.RefreshTokenRejected:
            raise InvalidGrant(BAD_REFRESH) from None
        with self.db.transaction() as session:
            user = session.get(User, rotated.user_id)
            tenant = session.get(Tenant, rotated.tenant_id)
        if user is None or tenant is None or not user.is_active:
            refresh_tokens.revoke_user(self.db, rotated.user_id)
            raise InvalidGrant(BAD_REFRESH)
        # Roles are read again, so a role change takes effect at the next refresh.
        return TokenResponse(self._user_token(user, tenant), self.tokens.ttl_seconds, rotated.token)

    def client_credentials(self, client_id: str, client_secret: str) -> TokenResponse:
        client = api_clients.authenticate(self.db, self.pepper, client_id, client_secret)
        if client is None:
            raise InvalidGrant(BAD_CLIENT)
        with self.db.transaction() as session:
            tenant = session.get(Tenant, client.tenant_id)
        if tenant is None:
            raise InvalidGrant(BAD_CLIENT)
        access = self.tokens.issue(
            subject=client.id,
            tenant_id=tenant.id,
            tenant_slug=tenant.slug,
            roles=list(client.roles),
            extra={"client_id": client.client_id, "scope": " ".join(client.scopes)},
        )
        return TokenResponse(access, self.tokens.ttl_seconds)
