"""RS256 signing keys: generated on first start and kept in the gateway database, or read from
GATEWAY_SIGNING_KEY_FILE. Every key that is not retired is published in the JWKS; the newest one signs.

Rotation (``crmctl keys rotate``) adds a new key and retires keys whose successor has been signing for
longer than ``key_retire_after_seconds`` (longer than any access token lives), so tokens issued just before
a rotation keep verifying. Workers re-read the keys periodically and on an unknown ``kid``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from crm_gateway.db import Database
from crm_gateway.models import SigningKey, utcnow

log = logging.getLogger("crm_gateway.keys")

KEY_SIZE = 2048
UNKNOWN_KID_REFRESH_INTERVAL = 5.0


class SigningKeyError(RuntimeError):
    """Signing keys are misconfigured."""


@dataclass(frozen=True)
class KeyPair:
    kid: str
    private_key: rsa.RSAPrivateKey
    created_at: datetime | None

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()


def _b64(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk_fields(public_key: rsa.RSAPublicKey) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {"e": _b64(numbers.e), "kty": "RSA", "n": _b64(numbers.n)}


def thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638 JWK thumbprint: a kid derived from the key itself."""
    canonical = json.dumps(public_jwk_fields(public_key), separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def public_jwk(pair: KeyPair) -> dict[str, str]:
    return {**public_jwk_fields(pair.public_key), "kid": pair.kid, "use": "sig", "alg": "RS256"}


def load_private_pem(pem: str | bytes) -> rsa.RSAPrivateKey:
    data = pem.encode() if isinstance(pem, str) else pem
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningKeyError("the signing key must be an RSA private key (RS256)")
    if key.key_size < 2048:
        raise SigningKeyError("the RSA signing key must have at least 2048 bits")
    return key


def generate_private_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _pair_from_pem(pem: str, created_at: datetime | None) -> KeyPair:
    key = load_private_pem(pem)
    return KeyPair(kid=thumbprint(key.public_key()), private_key=key, created_at=created_at)


def add_key(db: Database) -> str:
    """Generate a key, store it, and return its kid."""
    pem = generate_private_pem()
    kid = thumbprint(load_private_pem(pem).public_key())
    with db.transaction() as session:
        session.add(SigningKey(kid=kid, private_pem=pem, created_at=utcnow()))
    return kid


def ensure_key(db: Database) -> str:
    """Make sure a signing key exists (first start); return the active kid."""
    with db.transaction() as session:
        kid = session.scalar(
            select(SigningKey.kid)
            .where(SigningKey.retired_at.is_(None))
            .order_by(SigningKey.created_at.desc(), SigningKey.kid.desc())
            .limit(1)
        )
    if kid is not None:
        return kid
    kid = add_key(db)
    log.info("generated the first signing key", extra={"kid": kid})
    return kid


def rotate_keys(db: Database, retire_after: timedelta) -> tuple[str, list[str]]:
    """Add a new signing key; retire keys superseded for longer than `retire_after`."""
    new_kid = add_key(db)
    now = utcnow()
    retired: list[str] = []
    with db.transaction() as session:
        keys = list(
            session.scalars(
                select(SigningKey)
                .where(SigningKey.retired_at.is_(None))
                .order_by(SigningKey.created_at, SigningKey.kid)
            )
        )
        for key, successor in itertools.pairwise(keys):
            if key.kid != new_kid and now - successor.created_at >= retire_after:
                key.retired_at = now
                retired.append(key.kid)
    return new_kid, retired


def list_keys(db: Database) -> list[SigningKey]:
    with db.transaction() as session:
        return list(session.scalars(select(SigningKey).order_by(SigningKey.created_at, SigningKey.kid)))


class KeyStore:
    """The keys one worker signs and verifies with, cached and re-read from the database."""

    def __init__(self, db: Database, *, key_file: Path | None = None, cache_seconds: float = 30.0) -> None:
        self.db = db
        self.key_file = key_file
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._pairs: list[KeyPair] = []
        self._loaded_at = float("-inf")
        self._unknown_refresh_at = float("-inf")
        if key_file is not None:
            self._pairs = [_pair_from_pem(key_file.read_text(), None)]
            self._loaded_at = float("inf")

    @property
    def from_file(self) -> bool:
        return self.key_file is not None

    def _load(self) -> None:
        with self.db.transaction() as session:
            rows = list(
                session.scalars(
                    select(SigningKey)
                    .where(SigningKey.retired_at.is_(None))
                    .order_by(SigningKey.created_at.desc(), SigningKey.kid.desc())
                )
            )
        if not rows:
            ensure_key(self.db)
            self._load()
            return
        known = {p.kid: p for p in self._pairs}
        self._pairs = [known.get(r.kid) or _pair_from_pem(r.private_pem, r.created_at) for r in rows]
        self._loaded_at = time.monotonic()

    def _current(self) -> list[KeyPair]:
        if time.monotonic() - self._loaded_at >= self.cache_seconds:
            with self._lock:
                if time.monotonic() - self._loaded_at >= self.cache_seconds:
                    self._load()
        return self._pairs

    def refresh(self) -> None:
        if self.from_file:
            return
        with self._lock:
            self._load()

    def refresh_for_unknown_kid(self, kid: str) -> bool:
        """Re-read the keys when a token names a kid we do not know (rate limited); True if now known."""
        if self.from_file:
            return False
        with self._lock:
            if any(p.kid == kid for p in self._pairs):
                return True
            now = time.monotonic()
            if now - self._unknown_refresh_at < UNKNOWN_KID_REFRESH_INTERVAL:
                return False
            self._unknown_refresh_at = now
            self._load()
            return any(p.kid == kid for p in self._pairs)

    def signing_key(self) -> KeyPair:
        return self._current()[0]

    def verification_keys(self) -> dict[str, Any]:
        return {p.kid: p.public_key for p in self._current()}

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [public_jwk(p) for p in self._current()]}
