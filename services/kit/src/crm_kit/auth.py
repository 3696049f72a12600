"""JWT verification against the gateway's JWKS.

Algorithms are pinned (never taken from the token), and exp, iat, iss, aud, sub and tid are required
(RFC 8725). The core check is synchronous and key-source agnostic so the gateway (which holds the keys)
and the services (which fetch the JWKS) share it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import httpx
import jwt

from crm_kit.context import Principal
from crm_kit.errors import Unauthenticated

ALGORITHMS = ["RS256"]
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
LEEWAY_SECONDS = 10


def keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for entry in jwks.get("keys", []):
        if entry.get("kty") != "RSA" or not entry.get("kid"):
            continue
        keys[entry["kid"]] = jwt.PyJWK(dict(entry), algorithm="RS256").key
    return keys


def unverified_kid(token: str) -> str:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"malformed token: {exc}") from exc
    if header.get("alg") not in ALGORITHMS:
        raise Unauthenticated(f"token algorithm {header.get('alg')!r} is not accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthenticated("token has no key id")
    return kid


def verify_token(token: str, keys: Mapping[str, Any], *, issuer: str, audience: str) -> Principal:
    kid = unverified_kid(token)
    key = keys.get(kid)
    if key is None:
        raise Unauthenticated("token signed with an unknown key")
    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=ALGORITHMS,
            audience=audience,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("token expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"invalid token: {exc}") from exc
    tenant_id = claims.get("tid")
    if not isinstance(tenant_id, str) or not tenant_id:
        raise Unauthenticated("token carries no tenant")
    roles = claims.get("roles") or []
    if not isinstance(roles, list):
        raise Unauthenticated("token roles are malformed")
    return Principal(
        subject=str(claims["sub"]),
        tenant_id=tenant_id,
        tenant_slug=str(claims.get("tenant", "")),
        roles=tuple(str(r) for r in roles),
        token=token,
    )


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization must be 'Bearer <token>'")
    return token.strip()


class JwksVerifier:
    """Verifies tokens in a service, fetching the gateway's JWKS and refreshing it on an unknown kid.

    Refreshes are rate limited, so a flood of tokens with made-up kids cannot turn into a flood of requests.
    """

    def __init__(
        self, jwks_url: str, *, issuer: str, audience: str, min_refresh_interval: float = 5.0
    ) -> None:
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.min_refresh_interval = min_refresh_interval
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self, *, force: bool = False) -> None:
        async with self._lock:
            if not force and time.monotonic() - self._fetched_at < self.min_refresh_interval:
                return
            try:
                async with httpx.AsyncClient(timeout=5.0) as client:
                    response = await client.get(self.jwks_url)
                    response.raise_for_status()
                    self._keys = keys_from_jwks(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                raise Unauthenticated(f"cannot fetch signing keys: {exc}") from exc
            finally:
                self._fetched_at = time.monotonic()

    async def verify(self, token: str) -> Principal:
        kid = unverified_kid(token)
        if kid not in self._keys:
            await self.refresh()
        return verify_token(token, self._keys, issuer=self.issuer, audience=self.audience)


class StaticKeyVerifier:
    """Verifies against keys held in memory (tests, and the gateway itself)."""

    def __init__(self, keys: Mapping[str, Any], *, issuer: str, audience: str) -> None:
        self.keys = dict(keys)
        self.issuer = issuer
        self.audience = audience

    async def verify(self, token: str) -> Principal:
        return verify_token(token, self.keys, issuer=self.issuer, audience=self.audience)
