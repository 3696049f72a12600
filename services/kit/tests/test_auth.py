"""Token verification (RFC 8725): pinned algorithms, required claims, known keys only."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from crm_kit.auth import keys_from_jwks, verify_token
from crm_kit.errors import Unauthenticated
from crm_kit.testing.tokens import AUDIENCE, ISSUER, TokenIssuer


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer()


def _verify(issuer: TokenIssuer, token: str):  # type: ignore[no-untyped-def]
    return verify_token(token, keys_from_jwks(issuer.jwks()), issuer=ISSUER, audience=AUDIENCE)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_a_valid_token_gives_the_principal(issuer: TokenIssuer) -> None:
    p = _verify(issuer, issuer.issue("t1", "u1", ("member",)))
    assert (p.tenant_id, p.subject, p.roles) == ("t1", "u1", ("member",))


def test_alg_none_is_rejected(issuer: TokenIssuer) -> None:
    token = _b64({"alg": "none", "kid": issuer.kid}) + "." + _b64({"sub": "u", "tid": "t"}) + "."
    with pytest.raises(Unauthenticated):
        _verify(issuer, token)


def test_hs256_signed_with_the_public_key_is_rejected(issuer: TokenIssuer) -> None:
    pem = issuer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "tid": "t", "iat": now, "exp": now + 60}
    header = {"alg": "HS256", "kid": issuer.kid, "typ": "JWT"}
    import hashlib
    import hmac

    signing_input = f"{_b64(header)}.{_b64(claims)}"
    sig = base64.urlsafe_b64encode(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()).decode().rstrip("=")
    with pytest.raises(Unauthenticated):
        _verify(issuer, f"{signing_input}.{sig}")


def test_tampered_payload_is_rejected(issuer: TokenIssuer) -> None:
    header, _, sig = issuer.issue("t1").split(".")
    now = int(time.time())
    forged = _b64({"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "tid": "other", "iat": now, "exp": now + 60})
    with pytest.raises(Unauthenticated):
        _verify(issuer, f"{header}.{forged}.{sig}")


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200},
        {"aud": "someone-else"},
        {"iss": "evil"},
        {"tid": ""},
    ],
    ids=["expired", "wrong-aud", "wrong-iss", "no-tenant"],
)
def test_bad_claims_are_rejected(issuer: TokenIssuer, claims: dict) -> None:
    with pytest.raises(Unauthenticated):
        _verify(issuer, issuer.issue("t1", **claims))


def test_unknown_kid_is_rejected(issuer: TokenIssuer) -> None:
    other = TokenIssuer()
    with pytest.raises(Unauthenticated, match="unknown key"):
        _verify(issuer, other.issue("t1"))


def test_missing_required_claim_is_rejected(issuer: TokenIssuer) -> None:
    now = int(time.time())
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "tid": "t", "iat": now, "exp": now + 60},
        issuer.private_key,
        algorithm="RS256",
        headers={"kid": issuer.kid},
    )
    with pytest.raises(Unauthenticated):
        _verify(issuer, token)
