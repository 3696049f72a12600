"""The route table every HTTP route is registered through: one Operation per (path, method).

The same Operation drives the Flask rule, authentication and scope checks (rest/guard.py) and the OpenAPI
document (openapi.py), so a route cannot exist without being documented and protected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from google.protobuf.descriptor import Descriptor

REGISTRY = "crm_gateway.operations"

Schema = dict[str, Any]


@dataclass(frozen=True)
class Param:
    name: str
    location: str  # "query", "path" or "header"
    schema: Schema
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Reply:
    description: str
    schema: Schema | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)  # header name -> description
    # More media types documented with the same schema (e.g. the formats of a file download).
    more_content_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    rule: str  # Flask rule: /api/v1/contacts/<id>
    method: str  # GET, POST, PATCH, DELETE
    operation_id: str
    summary: str
    tag: str
    public: bool = False
    # Resource key of API-client scopes: GET needs "<scope>:read" (or write), other methods "<scope>:write".
    scope: str | None = None
    admin_only: bool = False
    request_body: Schema | None = None
    # Media types of the request body other than application/json (e.g. uploads), each with its schema;
    # when given, they replace the application/json entry built from request_body.
    request_content: Mapping[str, Schema] = field(default_factory=dict)
    request_body_required: bool = True
    replies: Mapping[int, Reply] = field(default_factory=dict)
    params: tuple[Param, ...] = ()
    messages: tuple[Descriptor, ...] = ()  # proto messages to publish under components.schemas
    description: str = ""
    # Whether API clients need "<scope>:write"; None derives it from the method (GET reads).
    write: bool | None = None

    @property
    def openapi_path(self) -> str:
        return openapi_path(self.rule)

    @property
    def required_scope(self) -> str | None:
        if self.scope is None:
            return None
        write = self.method != "GET" if self.write is None else self.write
        return f"{self.scope}:{'write' if write else 'read'}"


_CONVERTER = re.compile(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>")


def openapi_path(rule: str) -> str:
    return _CONVERTER.sub(r"{\1}", rule)


def operations(app: Flask) -> dict[str, Operation]:
    """Every registered operation, by Flask endpoint name (= operation id)."""
    ops: dict[str, Operation] = app.extensions.setdefault(REGISTRY, {})
    return ops


def add_route(app: Flask, op: Operation, view: Callable[..., Any]) -> None:
    ops = operations(app)
    if op.operation_id in ops:
        raise ValueError(f"duplicate operation id {op.operation_id}")
    app.add_url_rule(op.rule, endpoint=op.operation_id, view_func=view, methods=[op.method])
    ops[op.operation_id] = op


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


PROBLEM = ref("Problem")


def problem_reply(description: str, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(description, PROBLEM, "application/problem+json", headers or {})


def standard_errors(op_public: bool = False) -> dict[int, Reply]:
    errors = {
        400: problem_reply("invalid request: malformed JSON, unknown fields or wrong types"),
        429: problem_reply("rate limited", {"Retry-After": "seconds to wait"}),
        500: problem_reply("unexpected error (carries a trace id)"),
    }
    if not op_public:
        errors[401] = problem_reply("missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
        errors[403] = problem_reply("not allowed: tenant header mismatch, missing role or scope")
    return errors
