"""Every error is application/problem+json; nothing ever answers with HTML or a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from crm_gateway.config import Settings


def test_unknown_route_is_a_404_problem(client: FlaskClient) -> None:
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert response.get_json()["instance"] == "/no/such/page"


def test_wrong_method_is_a_405_problem(client: FlaskClient) -> None:
    response = client.delete("/healthz")
    assert response.status_code == 405
    assert response.content_type == "application/problem+json"
    assert "GET" in response.headers["Allow"]


def test_unexpected_exception_is_a_500_problem_with_trace_id(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    from crm_gateway.app import create_app

    app = create_app(make_settings())

    def boom() -> Any:
        raise RuntimeError("secret internals")

    app.add_url_rule("/boom", "boom", boom)
    with caplog.at_level(logging.ERROR, logger="crm_gateway.errors"):
        response = app.test_client().get(
            "/boom", headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
        )
    assert response.status_code == 500
    assert response.content_type == "application/problem+json"
    problem = response.get_json()
    assert problem["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert any("unhandled error" in r.message for r in caplog.records)


def test_database_failure_is_a_500_problem(make_settings: Callable[..., Settings], tmp_path: Any) -> None:
    from crm_gateway.app import create_app

    # A database that was never migrated: the login query fails inside the app.
    app = create_app(make_settings(database_url=f"sqlite:///{tmp_path}/empty.db"))
    response = app.test_client().post(
        "/api/v1/auth/token", json={"tenant": "acme", "email": "a@acme.test", "password": "password-123"}
    )
    assert response.status_code == 500
    assert response.content_type == "application/problem+json"


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"database": "ok", "services": "ok"}


def test_not_ready_without_schema(make_settings: Callable[..., Settings], tmp_path: Any) -> None:
    from crm_gateway.app import create_app

    app = create_app(make_settings(database_url=f"sqlite:///{tmp_path}/empty.db"))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert response.get_json()["checks"]["database"].startswith("not migrated")
