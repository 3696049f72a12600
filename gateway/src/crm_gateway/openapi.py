"""OpenAPI 3.1, generated from the route table (rest/registry.py) and the proto descriptors.

Message schemas use the proto field names (snake_case) and proto3 JSON types (int64 as string, Timestamp as
RFC 3339 string). Server-owned and output-only fields are marked readOnly; each resource also gets an
`.Input` schema (what a client may send) and a `.Page` schema (a list response).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from crm_gateway.rest.convert import SERVER_OWNED, enum_names, is_map, is_repeated, json_response, message_type
from crm_gateway.rest.registry import Operation, Reply, Schema, add_route, operations, ref

OPENAPI_PATH = "/api/v1/openapi.json"
TITLE = "CRM API"
VERSION = "1.0.0"

_INT32 = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SFIXED32,
}
_UINT32 = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?\d+(\.\d+)?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.Int32Value": {"type": ["integer", "null"], "format": "int32"},
    "google.protobuf.DoubleValue": {"type": ["number", "null"]},
}


def _scalar_schema(fd: FieldDescriptor) -> Schema:
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        return {"type": "string"}
    if t == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if t in _INT32:
        return {"type": "integer", "format": "int32"}
    if t in _UINT32:
        return {"type": "integer", "format": "int32", "minimum": 0}
    if t in _INT64:
        return {"type": "string", "format": "int64", "pattern": r"^-?\d+$"}
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return {"type": "number"}
    if t == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "contentEncoding": "base64"}
    if t == FieldDescriptor.TYPE_ENUM:
        return {"type": "string", "enum": enum_names(fd)}
    desc = message_type(fd)
    if desc is not None:
        name = desc.full_name
        return dict(_WELL_KNOWN[name]) if name in _WELL_KNOWN else ref(name)
    return {}


def message_ref(desc: Descriptor) -> Schema:
    """The schema of a whole message: inline for well-known types, else a reference (publish it via
    Operation.messages)."""
    name = desc.full_name
    return dict(_WELL_KNOWN[name]) if name in _WELL_KNOWN else ref(name)


def field_schema(fd: FieldDescriptor) -> Schema:
    entry = message_type(fd)
    if entry is not None and is_map(fd):
        value_fd = entry.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _scalar_schema(value_fd)}
    single = _scalar_schema(fd)
    if is_repeated(fd):
        return {"type": "array", "items": single}
    return single


def message_schema(desc: Descriptor, read_only: frozenset[str] = frozenset()) -> Schema:
    props: dict[str, Schema] = {}
    for fd in desc.fields:
        schema = field_schema(fd)
        if fd.name in read_only:
            schema = {**schema, "readOnly": True} if "$ref" not in schema else {"allOf": [schema], "readOnly": True}
        props[fd.name] = schema
    return {"type": "object", "title": desc.name, "properties": props, "additionalProperties": False}


def _nested_messages(desc: Descriptor, seen: dict[str, Descriptor]) -> None:
    if desc.full_name in seen or desc.full_name in _WELL_KNOWN:
        return
    seen[desc.full_name] = desc
    for fd in desc.fields:
        nested = message_type(fd)
        if nested is not None and not is_map(fd):
            _nested_messages(nested, seen)


def _reply(reply: Reply) -> dict[str, Any]:
    doc: dict[str, Any] = {"description": reply.description}
    if reply.schema is not None:
        types = (reply.content_type, *reply.more_content_types)
        doc["content"] = {media: {"schema": reply.schema} for media in types}
    if reply.headers:
        doc["headers"] = {
            name: {"description": text, "schema": {"type": "string"}} for name, text in reply.headers.items()
        }
    return doc


def _operation(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "responses": {str(code): _reply(r) for code, r in sorted(op.replies.items())},
    }
    if op.description:
        doc["description"] = op.description
    notes = []
    if op.admin_only:
        notes.append("Requires the admin role.")
    if op.required_scope:
        notes.append(f"API clients need the scope `{op.required_scope}`.")
    if notes:
        doc["description"] = " ".join([doc.get("description", ""), *notes]).strip()
    if op.params:
        doc["parameters"] = [
            {
                "name": p.name,
                "in": p.location,
                "required": p.required or p.location == "path",
                "schema": p.schema,
                **({"description": p.description} if p.description else {}),
            }
            for p in op.params
        ]
    if op.request_content:
        doc["requestBody"] = {
            "required": op.request_body_required,
            "content": {media: {"schema": schema} for media, schema in op.request_content.items()},
        }
    elif op.request_body is not None:
        content: dict[str, Any] = {"application/json": {"schema": op.request_body}}
        if op.operation_id == "issueToken":
            content["application/x-www-form-urlencoded"] = {"schema": op.request_body}
        doc["requestBody"] = {"required": op.request_body_required, "content": content}
    doc["security"] = [] if op.public else [{"bearerAuth": []}]
    return doc


def _static_schemas() -> dict[str, Schema]:
    string = {"type": "string"}
    return {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details",
            "required": ["type", "title", "status", "detail", "instance"],
            "properties": {
                "type": {"type": "string", "format": "uri-reference"},
                "title": string,
                "status": {"type": "integer"},
                "detail": string,
                "instance": {"type": "string", "format": "uri-reference"},
                "trace_id": string,
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["field", "message"],
                        "properties": {"field": string, "message": string},
                    },
                },
            },
        },
        "TokenRequest": {
            "oneOf": [
                {
                    "title": "password grant",
                    "type": "object",
                    "required": ["tenant", "email", "password"],
                    "properties": {
                        "grant_type": {"const": "password"},
                        "tenant": {**string, "description": "the tenant's slug"},
                        "email": {"type": "string", "format": "email"},
                        "password": {"type": "string", "format": "password"},
                    },
                    "additionalProperties": False,
                },
                {
                    "title": "refresh_token grant",
                    "type": "object",
                    "required": ["grant_type", "refresh_token"],
                    "properties": {"grant_type": {"const": "refresh_token"}, "refresh_token": string},
                    "additionalProperties": False,
                },
                {
                    "title": "client_credentials grant",
                    "type": "object",
                    "required": ["grant_type", "client_id", "client_secret"],
                    "properties": {
                        "grant_type": {"const": "client_credentials"},
                        "client_id": string,
                        "client_secret": {"type": "string", "format": "password"},
                    },
                    "additionalProperties": False,
                },
            ]
        },
        "TokenResponse": {
            "type": "object",
            "required": ["access_token", "token_type", "expires_in"],
            "properties": {
                "access_token": {**string, "description": "RS256 JWT"},
                "token_type": {"const": "Bearer"},
                "expires_in": {"type": "integer", "description": "seconds"},
                "refresh_token": {**string, "description": "single use; absent for client credentials"},
            },
        },
        "JWKS": {
            "type": "object",
            "required": ["keys"],
            "properties": {
                "keys": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["kty", "kid", "n", "e"],
                        "properties": {
                            "kty": {"const": "RSA"},
                            "kid": string,
                            "use": {"const": "sig"},
                            "alg": {"const": "RS256"},
                            "n": string,
                            "e": string,
                        },
                    },
                }
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": string, "checks": {"type": "object", "additionalProperties": string}},
        },
        "User": {
            "type": "object",
            "properties": {
                "id": {**string, "readOnly": True},
                "tenant_id": {**string, "readOnly": True},
                "email": {"type": "string", "format": "email"},
                "roles": {"type": "array", "items": {"enum": ["admin", "manager", "member"]}},
                "is_active": {"type": "boolean"},
                "create_time": {"type": "string", "format": "date-time", "readOnly": True},
            },
        },
        "UserCreate": {
            "type": "object",
            "required": ["email", "password"],
            "properties": {
                "email": {"type": "string", "format": "email"},
                "password": {"type": "string", "format": "password", "minLength": 10},
                "roles": {
                    "type": "array",
                    "items": {"enum": ["admin", "manager", "member"]},
                    "default": ["member"],
                },
            },
        },
        "UserPage": {
            "type": "object",
            "properties": {"items": {"type": "array", "items": ref("User")}, "next_page_token": string},
        },
    }


def build(app: Flask) -> dict[str, Any]:
    from crm_gateway.rest.resources import bound_resources

    paths: dict[str, dict[str, Any]] = {}
    messages: dict[str, Descriptor] = {}
    for op in sorted(operations(app).values(), key=lambda o: (o.openapi_path, o.method)):
        paths.setdefault(op.openapi_path, {})[op.method.lower()] = _operation(op)
        for desc in op.messages:
            _nested_messages(desc, messages)
    read_only: dict[str, frozenset[str]] = {}
    schemas: dict[str, Schema] = _static_schemas()
    for res in bound_resources():
        owned = res.ignored_on_input
        read_only[res.message.full_name] = owned
        full = message_schema(res.message, owned)
        schemas[f"{res.message.full_name}.Input"] = {
            **full,
            "title": f"{res.message.name} (input)",
            "description": "Fields a client may send. `version` is ignored on create; on update it is the "
            "version being edited. Server-owned fields are accepted and ignored.",
        }
        schemas[f"{res.message.full_name}.Page"] = {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": ref(res.message.full_name)},
                "next_page_token": {"type": "string"},
            },
        }
    for name, desc in sorted(messages.items()):
        schemas[name] = message_schema(desc, read_only.get(name, frozenset()))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "Multi-tenant CRM. JSON uses proto field names; errors are RFC 9457 "
            "application/problem+json; lists return {items, next_page_token}.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearerAuth": []}],
    }


def register(app: Flask) -> None:
    cache: dict[str, Any] = {}

    def view() -> Response:
        if "doc" not in cache:
            cache["doc"] = build(app)
        return json_response(cache["doc"])

    add_route(
        app,
        Operation(
            rule=OPENAPI_PATH,
            method="GET",
            operation_id="openapi",
            summary="This OpenAPI 3.1 document",
            tag="meta",
            replies={200: Reply("OpenAPI document", {"type": "object"})},
        ),
        view,
    )


__all__ = ["SERVER_OWNED", "build", "field_schema", "message_ref", "register"]
