"""Public routes: the token endpoint, the JWKS and the health probes."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, request

from crm_gateway import migrations
from crm_gateway.auth.grants import InvalidGrant
from crm_gateway.rest.convert import json_response, read_json_object
from crm_gateway.rest.guard import client_ip, rate_limited
from crm_gateway.rest.problems import FieldError, Problem, problem_type, validation_problem
from crm_gateway.rest.registry import Operation, Reply, add_route, problem_reply, ref, standard_errors
from crm_gateway.runtime import current_gateway

log = logging.getLogger("crm_gateway.auth")

TOKEN_PATH = "/api/v1/auth/token"
GRANT_FIELDS: dict[str, tuple[str, ...]] = {
    "password": ("tenant", "email", "password"),
    "refresh_token": ("refresh_token",),
    "client_credentials": ("client_id", "client_secret"),
}
MAX_FIELD_LENGTH = 1024


def _token_body() -> dict[str, Any]:
    if request.mimetype == "application/x-www-form-urlencoded":  # what OAuth client libraries send
        return {k: v for k, v in request.form.items()}
    return read_json_object()


def _token() -> Response:
    gateway = current_gateway()
    rate_limited(gateway.auth_ip_limit, client_ip(), "from this address")
    body = _token_body()
    grant = body.get("grant_type", "password")
    if grant not in GRANT_FIELDS:
        raise validation_problem([FieldError("grant_type", f"must be one of {', '.join(GRANT_FIELDS)}")])
    needed = GRANT_FIELDS[grant]
    errors = [FieldError(k, "unknown field") for k in body if k not in (*needed, "grant_type")]
    for key in needed:
        value = body.get(key)
        if not isinstance(value, str) or not value:
            errors.append(FieldError(key, "required, must be a non-empty string"))
        elif len(value) > MAX_FIELD_LENGTH:
            errors.append(FieldError(key, f"must be at most {MAX_FIELD_LENGTH} characters"))
    if errors:
        raise validation_problem(errors)
    grants = gateway.grants
    try:
        if grant == "password":
            rate_limited(gateway.auth_tenant_limit, "tenant:" + body["tenant"], "for this tenant")
            issued = grants.password(body["tenant"], body["email"], body["password"])
        elif grant == "refresh_token":
            issued = grants.refresh(body["refresh_token"])
        else:
            rate_limited(gateway.auth_tenant_limit, "client:" + body["client_id"], "for this client")
            issued = grants.client_credentials(body["client_id"], body["client_secret"])
    except InvalidGrant as exc:
        log.info("token request refused", extra={"grant_type": grant, "client_ip": client_ip()})
        raise Problem(
            401,
            title="Invalid credentials",
            detail=str(exc),
            type=problem_type("invalid-credentials"),
            headers={"WWW-Authenticate": 'Bearer realm="crm"'},
        ) from None
    return json_response(issued.to_json(), 200, {"Cache-Control": "no-store", "Pragma": "no-cache"})


def _jwks() -> Response:
    return json_response(current_gateway().keys.jwks(), 200, {"Cache-Control": "public, max-age=60"})


def _healthz() -> Response:
    return json_response({"status": "ok"})


def _readyz() -> Response:
    gateway = current_gateway()
    checks: dict[str, str] = {}
    try:
        gateway.db.ping()
        revision = migrations.current_revision(gateway.db.engine)
        checks["database"] = "ok" if revision is not None else "not migrated (run crm-gateway migrate)"
    except Exception as exc:
        log.warning("readiness: database check failed", extra={"error": str(exc)})
        checks["database"] = "unreachable"
    checks["services"] = "ok" if gateway.pool.configured() else "endpoints missing"
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        raise Problem(
            503,
            detail="not ready: " + ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"),
            type=problem_type("not-ready"),
            extra={"checks": checks},
            headers={"Retry-After": "5"},
        )
    return json_response({"status": "ready", "checks": checks})


def register(app: Flask) -> None:
    add_route(
        app,
        Operation(
            rule=TOKEN_PATH,
            method="POST",
            operation_id="issueToken",
            summary="Issue an access token (password, refresh_token or client_credentials grant)",
            tag="auth",
            public=True,
            request_body=ref("TokenRequest"),
            replies={
                200: Reply("Tokens", ref("TokenResponse")),
                401: problem_reply("bad credentials (one message for every cause)"),
                **standard_errors(op_public=True),
            },
        ),
        _token,
    )
    add_route(
        app,
        Operation(
            rule="/.well-known/jwks.json",
            method="GET",
            operation_id="jwks",
            summary="Public keys that verify the gateway's tokens",
            tag="auth",
            public=True,
            replies={200: Reply("JSON Web Key Set", ref("JWKS"))},
        ),
        _jwks,
    )
    add_route(
        app,
        Operation(
            rule="/healthz",
            method="GET",
            operation_id="healthz",
            summary="Liveness: the process is up",
            tag="health",
            public=True,
            replies={200: Reply("alive", ref("Health"))},
        ),
        _healthz,
    )
    add_route(
        app,
        Operation(
            rule="/readyz",
            method="GET",
            operation_id="readyz",
            summary="Readiness: database reachable and migrated, service endpoints configured",
            tag="health",
            public=True,
            replies={
                200: Reply("ready", ref("Health")),
                503: problem_reply("not ready", {"Retry-After": "seconds"}),
            },
        ),
        _readyz,
    )
