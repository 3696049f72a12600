"""Admin-only user management within the caller's own tenant."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, Response, request

from crm_gateway.models import ROLES, User
from crm_gateway.rest.convert import json_response, read_json_object
from crm_gateway.rest.guard import current_caller
from crm_gateway.rest.problems import FieldError, Problem, problem_type, validation_problem
from crm_gateway.rest.registry import Operation, Param, Reply, add_route, problem_reply, ref, standard_errors
from crm_gateway.runtime import current_gateway
from crm_gateway.tenants import Conflict, DirectoryError, create_user, get_user, list_users

BASE = "/api/v1/users"
MAX_PAGE = 500
DEFAULT_PAGE = 50
_FIELDS = {"email", "password", "roles"}


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "tenant_id": user.tenant_id,
        "email": user.email,
        "roles": list(user.roles),
        "is_active": user.is_active,
        "create_time": user.created_at.isoformat().replace("+00:00", "Z"),
    }


def _create() -> Response:
    caller = current_caller()
    body = read_json_object()
    errors = [FieldError(k, "unknown field") for k in body if k not in _FIELDS | {"id", "tenant_id"}]
    for key in ("email", "password"):
        if not isinstance(body.get(key), str):
            errors.append(FieldError(key, "required, must be a string"))
    roles = body.get("roles", ["member"])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        errors.append(FieldError("roles", f"must be an array of role names ({', '.join(ROLES)})"))
    if errors:
        raise validation_problem(errors)
    try:
        user = create_user(
            current_gateway().db,
            tenant_id=caller.tenant_id,  # always the caller's tenant; a body tenant_id is ignored
            email=body["email"],
            password=body["password"],
            roles=roles,
        )
    except Conflict as exc:
        raise Problem(
            409, detail=exc.message, type=problem_type("already-exists"), errors=[FieldError(exc.field, exc.message)]
        ) from None
    except DirectoryError as exc:
        raise validation_problem([FieldError(exc.field, exc.message)]) from None
    return json_response(user_json(user), 201, {"Location": f"{BASE}/{user.id}"})


def _list() -> Response:
    caller = current_caller()
    unknown = [k for k in request.args if k not in ("page_size", "page_token")]
    if unknown:
        raise validation_problem([FieldError(k, "unknown query parameter") for k in unknown])
    raw_size = request.args.get("page_size", "")
    if raw_size and not re.fullmatch(r"\d{1,6}", raw_size):
        raise validation_problem([FieldError("page_size", "must be an integer")])
    size = int(raw_size) if raw_size else DEFAULT_PAGE
    if not 0 <= size <= MAX_PAGE:
        raise validation_problem([FieldError("page_size", f"must be between 1 and {MAX_PAGE}")])
    size = size or DEFAULT_PAGE
    token = request.args.get("page_token") or None
    users = list_users(current_gateway().db, tenant_id=caller.tenant_id, limit=size + 1, after=token)
    more = len(users) > size
    users = users[:size]
    return json_response({"items": [user_json(u) for u in users], "next_page_token": users[-1].id if more else ""})


def _get(id: str) -> Response:
    user = get_user(current_gateway().db, tenant_id=current_caller().tenant_id, user_id=id)
    if user is None:
        raise Problem(404, detail=f"user {id!r} not found", type=problem_type("not-found"))
    return json_response(user_json(user))


def register(app: Flask) -> None:
    common = standard_errors()
    add_route(
        app,
        Operation(
            rule=BASE,
            method="POST",
            operation_id="createUser",
            summary="Create a user in the caller's tenant (admin only)",
            tag="users",
            scope="users",
            admin_only=True,
            request_body=ref("UserCreate"),
            replies={
                201: Reply("Created", ref("User"), headers={"Location": "URL of the user"}),
                409: problem_reply("a user with this email exists in the tenant"),
                **common,
            },
        ),
        _create,
    )
    add_route(
        app,
        Operation(
            rule=BASE,
            method="GET",
            operation_id="listUsers",
            summary="List the users of the caller's tenant (admin only)",
            tag="users",
            scope="users",
            admin_only=True,
            params=(
                Param("page_size", "query", {"type": "integer", "minimum": 0, "maximum": MAX_PAGE}),
                Param("page_token", "query", {"type": "string"}),
            ),
            replies={200: Reply("A page of users", ref("UserPage")), **common},
        ),
        _list,
    )
    add_route(
        app,
        Operation(
            rule=f"{BASE}/<id>",
            method="GET",
            operation_id="getUser",
            summary="Get one user of the caller's tenant (admin only)",
            tag="users",
            scope="users",
            admin_only=True,
            params=(Param("id", "path", {"type": "string"}, required=True),),
            replies={200: Reply("OK", ref("User")), 404: problem_reply("no such user"), **common},
        ),
        _get,
    )
