"""Every /api/v1 route but auth/token needs a valid bearer token; the tenant comes from the token alone."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from flask import Flask
from flask.testing import FlaskClient

from crm_gateway.auth.keys import generate_private_pem, load_private_pem
from crm_gateway.runtime import Gateway

URL = "/api/v1/users"


def _claims(tenant: Any, **override: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "crm-gateway",
        "aud": "crm",
        "sub": "user-1",
        "tid": tenant.id,
        "tenant": tenant.slug,
        "roles": ["admin"],
        "iat": now,
        "exp": now + 600,
        "jti": "j1",
    }
    claims.update(override)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(gw: Gateway, claims: dict[str, Any], **headers: Any) -> str:
    pair = gw.keys.signing_key()
    return jwt.encode(claims, pair.private_key, algorithm="RS256", headers={"kid": pair.kid, **headers})


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def assert_401(response: Any) -> None:
    assert response.status_code == 401, response.get_json()
    assert response.content_type == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    problem = response.get_json()
    assert problem["status"] == 401 and problem["instance"] == URL and problem["detail"]


def test_a_valid_token_passes(client: FlaskClient, gw: Gateway, tenant: Any) -> None:
    token = _sign(gw, _claims(tenant))
    assert client.get(URL, headers={"Authorization": f"Bearer {token}"}).status_code == 200


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "token abc"])
def test_missing_or_malformed_authorization_is_401(client: FlaskClient, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    assert_401(client.get(URL, headers=headers))


def test_alg_none_is_401(client: FlaskClient, gw: Gateway, tenant: Any) -> None:
    token = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': gw.keys.signing_key().kid})}.{_b64(_claims(tenant))}."
    assert_401(client.get(URL, headers={"Authorization": f"Bearer {token}"}))


def test_hs256_signed_with_the_public_key_is_401(client: FlaskClient, gw: Gateway, tenant: Any) -> None:
    pair = gw.keys.signing_key()
    public_pem = pair.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": pair.kid})
    payload = _b64(_claims(tenant))
    import hashlib
    import hmac

    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    assert_401(client.get(URL, headers={"Authorization": f"Bearer {token}"}))


def test_tampered_payload_is_401(client: FlaskClient, gw: Gateway, tenant: Any) -> None:
    token = _sign(gw, _claims(tenant, roles=["member"]))
    header, _, signature = token.split(".")
    forged = f"{header}.{_b64(_claims(tenant, roles=['admin']))}.{signature}"
    assert_401(client.get(URL, headers={"Authorization": f"Bearer {forged}"}))


def test_tampered_signature_is_401(client: FlaskClient, gw: Gateway, tenant: Any) -> None:
    token = _sign(gw, _claims(tenant))
    head, payload, signature = token.split(".")
    flipped = signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")
    assert_401(client.get(URL, headers={"Authorization": f"Bearer {head}.{payload}.{flipped}"}))


def test_token_signed_by_a_foreign_key_with_our_kid_is_401(client: FlaskClient, gw: Gateway, tenant: Any) -> None:
    foreign = load_private_pem(generate_private_pem())
    token = jwt.encode(_claims(tenant), foreign, algorithm="RS256", headers={"kid": gw.keys.signing_key().kid})
    assert_401(client.get(URL, headers={"Authorization": f"Bearer {token}"}))


def test_expired_token_is_401(client: FlaskClient, gw: Gateway, tenant: Any) -> None:
    now = int(time.time())
    token = _sign(gw, _claims(tenant, iat=now - 3600, exp=now - 1800))
    response = client.get(URL, headers={"Authorization": f"Bearer {token}"})
    assert_401(response)
    assert "expired" in response.get_json()["detail"]


@pytest.mark.parametrize(
    "override",
    [{"aud": "someone-else"}, {"iss": "evil"}, {"exp": None}, {"iat": None}, {"sub": None}, {"tid": None}],
    ids=["wrong-aud", "wrong-iss", "no-exp", "no-iat", "no-sub", "no-tid"],
)
def test_wrong_or_missing_claims_are_401(
    client: FlaskClient, gw: Gateway, tenant: Any, override: dict[str, Any]
) -> None:
    token = _sign(gw, _claims(tenant, **override))
    assert_401(client.get(URL, headers={"Authorization": f"Bearer {token}"}))


def test_unknown_kid_is_401(client: FlaskClient, tenant: Any) -> None:
    foreign = load_private_pem(generate_private_pem())
    token = jwt.encode(_claims(tenant), foreign, algorithm="RS256", headers={"kid": "not-a-known-kid"})
    assert_401(client.get(URL, headers={"Authorization": f"Bearer {token}"}))


def test_garbage_token_is_401(client: FlaskClient) -> None:
    assert_401(client.get(URL, headers={"Authorization": "Bearer not.a.jwt"}))


def test_every_api_route_requires_a_token(app: Flask, client: FlaskClient) -> None:
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1") or rule.rule == "/api/v1/auth/token":
            continue
        url = rule.rule.replace("<id>", "some-id")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            response = client.open(url, method=method, json={})
            assert response.status_code == 401, (method, url)
            checked += 1
    assert checked >= 30


@pytest.mark.parametrize("header", ["X-Tenant-ID", "X-Tenant"])
def test_tenant_header_must_match_the_token(
    client: FlaskClient, admin_token: str, tenant: Any, header: str, auth: Callable[..., dict[str, str]]
) -> None:
    mismatch = client.get(URL, headers=auth(admin_token, **{header: "globex"}))
    assert mismatch.status_code == 403
    assert mismatch.content_type == "application/problem+json"
    assert header in mismatch.get_json()["detail"]
    for value in (tenant.id, tenant.slug):
        assert client.get(URL, headers=auth(admin_token, **{header: value})).status_code == 200


def test_api_rate_limit_per_tenant(make_settings: Callable[..., Any], tenant: Any) -> None:
    from crm_gateway.app import create_app

    app = create_app(make_settings(api_rate_per_tenant=2))
    client = app.test_client()
    token = client.post(
        "/api/v1/auth/token", json={"tenant": "acme", "email": tenant.admin_email, "password": tenant.password}
    ).get_json()["access_token"]
    codes = [client.get(URL, headers={"Authorization": f"Bearer {token}"}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
