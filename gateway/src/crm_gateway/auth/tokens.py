"""Access tokens: RS256 JWTs the gateway issues and verifies (with crm_kit.auth.verify_token)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from crm_gateway.auth.keys import KeyStore
from crm_kit.auth import unverified_kid, verify_token
from crm_kit.context import Principal
from crm_kit.errors import Unauthenticated


@dataclass(frozen=True)
class Caller:
    """A verified caller: the kit's principal plus what only the gateway looks at."""

    principal: Principal
    # OAuth-style scopes of an API client's token; None for people (no scope restriction).
    scopes: frozenset[str] | None = None
    client_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id

    @property
    def tenant_slug(self) -> str:
        return self.principal.tenant_slug

    def has_role(self, *roles: str) -> bool:
        return self.principal.has_role(*roles)


class TokenService:
    def __init__(self, keys: KeyStore, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds

    def issue(
        self,
        *,
        subject: str,
        tenant_id: str,
        tenant_slug: str,
        roles: Sequence[str],
        extra: dict[str, Any] | None = None,
    ) -> str:
        pair = self.keys.signing_key()
        now = int(time.time())
        claims: dict[str, Any] = {
            **(extra or {}),
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "tid": tenant_id,
            "tenant": tenant_slug,
            "roles": list(roles),
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl_seconds,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, pair.private_key, algorithm="RS256", headers={"kid": pair.kid})

    def verify(self, token: str) -> Caller:
        """Verify a bearer token; raises crm_kit.errors.Unauthenticated."""
        kid = unverified_kid(token)
        keys = self.keys.verification_keys()
        if kid not in keys and self.keys.refresh_for_unknown_kid(kid):
            keys = self.keys.verification_keys()
        principal = verify_token(token, keys, issuer=self.issuer, audience=self.audience)
        # The signature and claims were verified just above; this only reads the gateway's own claims.
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        scope = claims.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise Unauthenticated("token scope is malformed")
        client_id = claims.get("client_id")
        return Caller(
            principal=principal,
            scopes=frozenset(scope.split()) if scope is not None else None,
            client_id=client_id if isinstance(client_id, str) else None,
            claims=claims,
        )
