"""Token issuance (password, refresh rotation, client credentials), JWKS, and key rotation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient

from crm_gateway.auth import api_clients
from crm_gateway.auth.keys import generate_private_pem, load_private_pem, rotate_keys, thumbprint
from crm_gateway.config import Settings
from crm_gateway.models import ApiClient, utcnow
from crm_gateway.runtime import Gateway
from crm_kit.auth import keys_from_jwks, verify_token

TOKEN = "/api/v1/auth/token"


def test_password_grant_issues_a_verifiable_rs256_token(client: FlaskClient, tenant: Any) -> None:
    response = client.post(TOKEN, json={"tenant": "acme", "email": "ADMIN@acme.test", "password": tenant.password})
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["refresh_token"].startswith("crmrt_")
    assert response.headers["Cache-Control"] == "no-store"

    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "RS256"
    jwks = client.get("/.well-known/jwks.json").get_json()
    assert header["kid"] in {k["kid"] for k in jwks["keys"]}

    principal = verify_token(body["access_token"], keys_from_jwks(jwks), issuer="crm-gateway", audience="crm")
    assert principal.tenant_id == tenant.id
    assert principal.tenant_slug == "acme"
    assert principal.roles == ("admin",)
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert {"iss", "aud", "sub", "tid", "tenant", "roles", "iat", "exp", "jti"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 900
    assert claims["iss"] == "crm-gateway" and claims["aud"] == "crm"


@pytest.mark.parametrize(
    "body",
    [
        {"tenant": "nope", "email": "admin@acme.test", "password": "correct-horse-42"},
        {"tenant": "acme", "email": "nobody@acme.test", "password": "correct-horse-42"},
        {"tenant": "acme", "email": "admin@acme.test", "password": "wrong-horse-42"},
    ],
    ids=["unknown-tenant", "unknown-user", "wrong-password"],
)
def test_bad_credentials_are_one_indistinguishable_401(client: FlaskClient, tenant: Any, body: dict[str, str]) -> None:
    response = client.post(TOKEN, json=body)
    assert response.status_code == 401
    assert response.content_type == "application/problem+json"
    problem = response.get_json()
    assert problem["detail"] == "invalid tenant, email or password"
    assert problem["status"] == 401 and problem["instance"] == TOKEN


def test_user_of_another_tenant_cannot_log_in_there(
    client: FlaskClient, make_tenant: Callable[..., Any], tenant: Any
) -> None:
    make_tenant("globex")
    response = client.post(TOKEN, json={"tenant": "globex", "email": "admin@acme.test", "password": tenant.password})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"tenant": "acme", "email": "admin@acme.test"}, ["password"]),
        ({"tenant": "acme", "email": 5, "password": "x"}, ["email"]),
        ({"grant_type": "magic"}, ["grant_type"]),
        ({"grant_type": "refresh_token"}, ["refresh_token"]),
        ({"grant_type": "client_credentials", "client_id": "c"}, ["client_secret"]),
        ({"tenant": "acme", "email": "a@b.cd", "password": "x", "role": "admin"}, ["role"]),
    ],
)
def test_malformed_token_requests_are_400_naming_fields(
    client: FlaskClient, body: dict[str, Any], fields: list[str]
) -> None:
    response = client.post(TOKEN, json=body)
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert [e["field"] for e in response.get_json()["errors"]] == fields


def test_token_endpoint_accepts_form_encoding(client: FlaskClient, tenant: Any) -> None:
    response = client.post(
        TOKEN,
        data={"grant_type": "password", "tenant": "acme", "email": tenant.admin_email, "password": tenant.password},
    )
    assert response.status_code == 200


def test_refresh_rotates_and_reuse_revokes_the_family(
    client: FlaskClient, login: Callable[..., Any], tenant: Any
) -> None:
    first = login("acme", tenant.admin_email)["refresh_token"]
    response = client.post(TOKEN, json={"grant_type": "refresh_token", "refresh_token": first})
    assert response.status_code == 200
    second = response.get_json()["refresh_token"]
    assert second != first
    assert response.get_json()["access_token"]

    # The spent token comes back: someone else holds it. Both it and its successor die.
    reused = client.post(TOKEN, json={"grant_type": "refresh_token", "refresh_token": first})
    assert reused.status_code == 401
    assert reused.get_json()["detail"] == "invalid or expired refresh token"
    after = client.post(TOKEN, json={"grant_type": "refresh_token", "refresh_token": second})
    assert after.status_code == 401

    # A fresh login starts a new, independent family.
    fresh = login("acme", tenant.admin_email)["refresh_token"]
    assert client.post(TOKEN, json={"grant_type": "refresh_token", "refresh_token": fresh}).status_code == 200


def test_unknown_or_malformed_refresh_token_is_401(client: FlaskClient, tenant: Any) -> None:
    for token in ("crmrt_doesnotexist", "garbage"):
        response = client.post(TOKEN, json={"grant_type": "refresh_token", "refresh_token": token})
        assert response.status_code == 401


def test_expired_refresh_token_is_401(client: FlaskClient, gw: Gateway, tenant: Any, login: Callable[..., Any]) -> None:
    from crm_gateway.models import RefreshToken

    token = login("acme", tenant.admin_email)["refresh_token"]
    with gw.db.transaction() as session:
        for row in session.query(RefreshToken):
            row.expires_at = utcnow() - timedelta(seconds=1)
    response = client.post(TOKEN, json={"grant_type": "refresh_token", "refresh_token": token})
    assert response.status_code == 401


def _client(gw: Gateway, tenant_id: str, **kwargs: Any) -> api_clients.NewClient:
    values: dict[str, Any] = {"name": "erp sync", "roles": ["member"], "scopes": ["contacts:read"], "expires_at": None}
    values.update(kwargs)
    return api_clients.create(gw.db, gw.pepper, tenant_id=tenant_id, **values)


def test_client_credentials_grant(client: FlaskClient, gw: Gateway, tenant: Any) -> None:
    new = _client(gw, tenant.id)
    assert new.client.client_id.startswith("crmc_") and new.secret.startswith("crms_")
    assert new.secret not in new.client.secret_hash
    response = client.post(
        TOKEN,
        json={"grant_type": "client_credentials", "client_id": new.client.client_id, "client_secret": new.secret},
    )
    assert response.status_code == 200
    body = response.get_json()
    assert "refresh_token" not in body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["tid"] == tenant.id and claims["scope"] == "contacts:read"
    assert claims["client_id"] == new.client.client_id and claims["roles"] == ["member"]
    with gw.db.transaction() as session:
        stored = session.query(ApiClient).one()
        assert stored.last_used_at is not None


def test_client_credentials_refused_when_wrong_revoked_or_expired(
    client: FlaskClient, gw: Gateway, tenant: Any
) -> None:
    def attempt(client_id: str, secret: str) -> int:
        grant = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        return client.post(TOKEN, json=grant).status_code

    good = _client(gw, tenant.id)
    assert attempt(good.client.client_id, good.secret + "x") == 401
    assert attempt("crmc_unknown", good.secret) == 401
    expired = _client(gw, tenant.id, expires_at=utcnow() - timedelta(seconds=1))
    assert attempt(expired.client.client_id, expired.secret) == 401
    assert api_clients.revoke(gw.db, good.client.client_id)
    assert attempt(good.client.client_id, good.secret) == 401


def test_configured_pepper_is_used(make_settings: Callable[..., Settings]) -> None:
    from crm_gateway.app import create_app

    app = create_app(make_settings(api_key_pepper="a-pepper-of-sixteen+"))
    assert app.extensions["crm_gateway"].pepper == b"a-pepper-of-sixteen+"


def test_jwks_shape(client: FlaskClient) -> None:
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    keys = response.get_json()["keys"]
    assert len(keys) == 1
    key = keys[0]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig"
    assert {"kid", "n", "e"} <= set(key)
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key), "private parts must never be published"


def test_key_rotation_keeps_old_tokens_valid(
    client: FlaskClient, gw: Gateway, tenant: Any, login: Callable[..., Any], auth: Callable[..., Any]
) -> None:
    old_token = login("acme", tenant.admin_email)["access_token"]
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    new_kid, retired = rotate_keys(gw.db, timedelta(hours=1))
    assert retired == [] and new_kid != old_kid
    gw.keys.refresh()  # a worker would do this within GATEWAY_KEY_CACHE_SECONDS
    kids = {k["kid"] for k in client.get("/.well-known/jwks.json").get_json()["keys"]}
    assert kids == {old_kid, new_kid}
    new_token = login("acme", tenant.admin_email)["access_token"]
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    for token in (old_token, new_token):
        assert client.get("/api/v1/users", headers=auth(token)).status_code == 200

    # Once the new key has signed for longer than the grace period, the old one is retired.
    _, retired = rotate_keys(gw.db, timedelta(0))
    assert old_kid in retired
    gw.keys.refresh()
    assert client.get("/api/v1/users", headers=auth(old_token)).status_code == 401


def test_worker_picks_up_a_key_rotated_elsewhere_on_unknown_kid(
    client: FlaskClient, gw: Gateway, tenant: Any, auth: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    from crm_gateway.app import create_app

    gw.keys.jwks()  # this worker has cached the first key
    other = create_app(make_settings())  # another worker/process rotates and signs with the new key
    rotate_keys(other.extensions["crm_gateway"].db, timedelta(hours=1))
    token = (
        other.test_client()
        .post(TOKEN, json={"tenant": "acme", "email": tenant.admin_email, "password": tenant.password})
        .get_json()["access_token"]
    )
    assert client.get("/api/v1/users", headers=auth(token)).status_code == 200


def test_signing_key_file(make_settings: Callable[..., Settings], tmp_path: Path, tenant: Any) -> None:
    from crm_gateway.app import create_app

    pem = generate_private_pem()
    path = tmp_path / "signing.pem"
    path.write_text(pem)
    app = create_app(make_settings(signing_key_file=path))
    client = app.test_client()
    keys = client.get("/.well-known/jwks.json").get_json()["keys"]
    assert [k["kid"] for k in keys] == [thumbprint(load_private_pem(pem).public_key())]
    token = client.post(TOKEN, json={"tenant": "acme", "email": tenant.admin_email, "password": tenant.password})
    assert jwt.get_unverified_header(token.get_json()["access_token"])["kid"] == keys[0]["kid"]


def test_auth_rate_limit_per_ip(make_settings: Callable[..., Settings], tenant: Any) -> None:
    from crm_gateway.app import create_app

    client = create_app(make_settings(auth_rate_per_ip=3)).test_client()
    bad = {"tenant": "acme", "email": "x@acme.test", "password": "wrong-password-1"}
    codes = [client.post(TOKEN, json=bad).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    limited = client.post(TOKEN, json=bad)
    assert limited.content_type == "application/problem+json"
    assert int(limited.headers["Retry-After"]) >= 1
    # Another address is not affected.
    assert client.post(TOKEN, json=bad, environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 401


def test_auth_rate_limit_per_tenant(make_settings: Callable[..., Settings], tenant: Any) -> None:
    from crm_gateway.app import create_app

    client = create_app(make_settings(auth_rate_per_tenant=2)).test_client()
    bad = {"tenant": "acme", "email": "x@acme.test", "password": "wrong-password-1"}
    codes = [client.post(TOKEN, json=bad, environ_base={"REMOTE_ADDR": f"10.0.0.{i}"}).status_code for i in range(3)]
    assert codes == [401, 401, 429]
    other = {**bad, "tenant": "globex"}
    assert client.post(TOKEN, json=other, environ_base={"REMOTE_ADDR": "10.0.1.1"}).status_code == 401
