"""A token issuer for tests that do not run the gateway: RS256 keys and tokens shaped like the gateway's."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from crm_kit.auth import StaticKeyVerifier

ISSUER = "crm-gateway"
AUDIENCE = "crm"


class TokenIssuer:
    def __init__(self, issuer: str = ISSUER, audience: str = AUDIENCE) -> None:
        self.issuer = issuer
        self.audience = audience
        self.kid = uuid.uuid4().hex[:12]
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def issue(
        self,
        tenant_id: str,
        subject: str = "user-1",
        roles: tuple[str, ...] = ("admin",),
        *,
        ttl: int = 900,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "tid": tenant_id,
            "tenant": tenant_id,
            "roles": list(roles),
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        payload.update(claims)
        return jwt.encode(payload, self.private_key, algorithm="RS256", headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def verifier(self) -> StaticKeyVerifier:
        keys = {self.kid: self.private_key.public_key()}
        return StaticKeyVerifier(keys, issuer=self.issuer, audience=self.audience)

    def metadata(self, tenant_id: str, **kwargs: Any) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.issue(tenant_id, **kwargs)}"),)
