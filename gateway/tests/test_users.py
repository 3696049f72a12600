"""Admin-only user management in the caller's own tenant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient

URL = "/api/v1/users"


def test_admin_creates_a_member_who_can_log_in(
    client: FlaskClient, admin_token: str, tenant: Any, login: Callable[..., Any], auth: Callable[..., Any]
) -> None:
    response = client.post(
        URL,
        json={"email": "Bob@Acme.test", "password": "bob-password-1", "roles": ["member"], "tenant_id": "other"},
        headers=auth(admin_token),
    )
    assert response.status_code == 201, response.get_json()
    user = response.get_json()
    assert user["email"] == "bob@acme.test" and user["roles"] == ["member"]
    assert user["tenant_id"] == tenant.id, "the tenant comes from the token, never the body"
    assert response.headers["Location"] == f"{URL}/{user['id']}"
    assert client.get(response.headers["Location"], headers=auth(admin_token)).get_json() == user
    assert login("acme", "bob@acme.test", "bob-password-1")["access_token"]


def test_member_cannot_manage_users(client: FlaskClient, member_token: str, auth: Callable[..., Any]) -> None:
    for response in (
        client.get(URL, headers=auth(member_token)),
        client.post(URL, json={"email": "x@acme.test", "password": "password-123"}, headers=auth(member_token)),
    ):
        assert response.status_code == 403
        assert response.content_type == "application/problem+json"


def test_roles_from_the_body_cannot_escalate_beyond_admin_choice(
    client: FlaskClient, admin_token: str, auth: Callable[..., Any]
) -> None:
    response = client.post(
        URL, json={"email": "x@acme.test", "password": "password-123", "roles": ["root"]}, headers=auth(admin_token)
    )
    assert response.status_code == 400
    assert response.get_json()["errors"][0]["field"] == "roles"


def test_user_validation(client: FlaskClient, admin_token: str, auth: Callable[..., Any]) -> None:
    cases = [
        ({"email": "not-an-email", "password": "password-123"}, "email"),
        ({"email": "a@acme.test", "password": "short1"}, "password"),
        ({"email": "a@acme.test", "password": "onlyletterspassword"}, "password"),
        ({"email": "a@acme.test"}, "password"),
        ({"email": "a@acme.test", "password": "password-123", "nick": "x"}, "nick"),
    ]
    for body, field in cases:
        response = client.post(URL, json=body, headers=auth(admin_token))
        assert response.status_code == 400, body
        assert field in [e["field"] for e in response.get_json()["errors"]], body


def test_duplicate_email_is_409(client: FlaskClient, admin_token: str, tenant: Any, auth: Callable[..., Any]) -> None:
    response = client.post(
        URL, json={"email": tenant.admin_email.upper(), "password": "password-123"}, headers=auth(admin_token)
    )
    assert response.status_code == 409


def test_users_are_listed_per_tenant_with_pages(
    client: FlaskClient,
    admin_token: str,
    make_tenant: Callable[..., Any],
    auth: Callable[..., Any],
) -> None:
    make_tenant("globex")
    for i in range(3):
        client.post(URL, json={"email": f"u{i}@acme.test", "password": "password-123"}, headers=auth(admin_token))
    page = client.get(f"{URL}?page_size=2", headers=auth(admin_token)).get_json()
    assert len(page["items"]) == 2 and page["next_page_token"]
    rest = client.get(f"{URL}?page_size=2&page_token={page['next_page_token']}", headers=auth(admin_token)).get_json()
    emails = {u["email"] for u in page["items"] + rest["items"]}
    assert emails == {"admin@acme.test", "u0@acme.test", "u1@acme.test", "u2@acme.test"}
    assert rest["next_page_token"] == ""
    assert client.get(f"{URL}?page_size=x", headers=auth(admin_token)).status_code == 400


def test_other_tenants_user_is_404(
    client: FlaskClient,
    admin_token: str,
    make_tenant: Callable[..., Any],
    login: Callable[..., Any],
    auth: Callable[..., Any],
) -> None:
    other = make_tenant("globex")
    other_token = login("globex", other.admin_email)["access_token"]
    mine = client.get(URL, headers=auth(admin_token)).get_json()["items"][0]["id"]
    assert client.get(f"{URL}/{mine}", headers=auth(other_token)).status_code == 404
