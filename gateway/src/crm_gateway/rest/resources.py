"""REST resources generated from ONE route table over the proto descriptors.

For each resource the table names the plural, the gRPC service and the message; everything else (the
five methods, request classes, the resource field, list items, filters, OpenAPI schemas) is read from the
descriptors. There is no hand-written handler per resource.

    POST   /api/v1/<plural>        Create<X>{<x>: body}             201 + Location
    GET    /api/v1/<plural>/<id>   Get<X>{id}                       200
    PATCH  /api/v1/<plural>/<id>   Update<X>{<x>, update_mask}      200 (mask = body keys; version/If-Match;
                                   a map such as custom_fields is merged key by key, null removes a key)
    DELETE /api/v1/<plural>/<id>   Delete<X>{id, version}           204 (?version= or If-Match)
    GET    /api/v1/<plural>        List<Plural>{page_size, page_token, filters...}
                                   -> {"items": [...], "next_page_token": "..."}
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
from flask import Flask, Response, g, request
from google.protobuf import descriptor_pool, field_mask_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from crm_gateway.rest.convert import (
    SERVER_OWNED,
    is_repeated,
    json_response,
    message_type,
    parse_fields,
    parse_query,
    query_fields,
    read_json_object,
    to_json,
)
from crm_gateway.rest.grpc_errors import problem_from_rpc_error
from crm_gateway.rest.guard import current_caller, current_token
from crm_gateway.rest.param_docs import describe
from crm_gateway.rest.problems import FieldError, Problem, problem_type, validation_problem
from crm_gateway.rest.registry import Operation, Param, Reply, add_route, ref, standard_errors
from crm_gateway.routing.cells import UnknownCell, UnknownTenant
from crm_gateway.runtime import current_gateway

API = "/api/v1"

# The generated modules whose descriptors the table refers to (imported for their side effect of
# registering the descriptors in the default pool).
PROTO_MODULES = (
    "crm.customer.v1.customer_pb2",
    "crm.customer.v1.custom_fields_pb2",
    "crm.customer.v1.timeline_pb2",
    "crm.sales.v1.sales_pb2",
    "crm.marketing.v1.marketing_pb2",
    "crm.servicedesk.v1.servicedesk_pb2",
    "crm.analytics.v1.analytics_pb2",
    "crm.common.v1.audit_pb2",
    "crm.customer.v1.privacy_pb2",
    "crm.customer.v1.dedupe_pb2",
    "crm.common.v1.personal_data_pb2",
    "crm.customer.v1.transfer_pb2",
)


@dataclass(frozen=True)
class ResourceRoute:
    plural: str
    service: str  # full proto name of the service
    message: str  # short message name, e.g. "Contact"
    # Fields documented "Output only" beyond the server-owned ones every resource has.
    output_only: tuple[str, ...] = ()
    # Create, update and delete need the admin role (reads stay open to the tenant); the service checks too.
    admin_writes: bool = False


@dataclass(frozen=True)
class SingletonRoute:
    path: str  # below /api/v1
    service: str
    method: str
    scope: str  # API-client scope resource key
    summary: str


RESOURCES: tuple[ResourceRoute, ...] = (
    ResourceRoute("contacts", "crm.customer.v1.CustomerService", "Contact", output_only=("display_name",)),
    ResourceRoute("accounts", "crm.customer.v1.CustomerService", "Account", output_only=("contact_count",)),
    ResourceRoute("custom-fields", "crm.customer.v1.CustomFieldService", "CustomFieldDefinition", admin_writes=True),
    ResourceRoute("interactions", "crm.customer.v1.TimelineService", "Interaction", output_only=("source",)),
    ResourceRoute("opportunities", "crm.sales.v1.SalesService", "Opportunity", output_only=("contact_name", "status")),
    ResourceRoute("campaigns", "crm.marketing.v1.MarketingService", "Campaign"),
    ResourceRoute("tickets", "crm.servicedesk.v1.ServicedeskService", "Ticket"),
)

SINGLETONS: tuple[SingletonRoute, ...] = (
    SingletonRoute(
        "/pipeline", "crm.sales.v1.SalesService", "GetPipeline", "opportunities", "The tenant's sales pipeline"
    ),
    SingletonRoute(
        "/analytics/summary",
        "crm.analytics.v1.AnalyticsService",
        "GetSummary",
        "analytics",
        "Tenant-wide summary built from every service's events",
    ),
)


def service_key(service: ServiceDescriptor) -> str:
    """crm.customer.v1.CustomerService -> "customer" (the cell's endpoint name)."""
    parts = service.full_name.split(".")
    if len(parts) < 4 or parts[0] != "crm":
        raise ValueError(f"unexpected service name {service.full_name}")
    return parts[1]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass(frozen=True)
class BoundResource:
    """A route-table entry with its descriptors resolved."""

    route: ResourceRoute
    service: ServiceDescriptor
    message: Descriptor
    field: str  # the request field holding the resource, e.g. "contact"
    create: MethodDescriptor
    get: MethodDescriptor
    update: MethodDescriptor
    delete: MethodDescriptor
    list_method: MethodDescriptor
    items_field: str  # the list response's repeated field, e.g. "contacts"

    @property
    def plural(self) -> str:
        return self.route.plural

    @property
    def service_key(self) -> str:
        return service_key(self.service)

    @property
    def ignored_on_input(self) -> frozenset[str]:
        return SERVER_OWNED | frozenset(self.route.output_only)

    @property
    def list_filters(self) -> list[FieldDescriptor]:
        return query_fields(self.list_method.input_type)

    @property
    def has_version(self) -> bool:
        return "version" in self.message.fields_by_name


def _pool() -> descriptor_pool.DescriptorPool:
    for module in PROTO_MODULES:
        importlib.import_module(module)
    return descriptor_pool.Default()


def _method(service: ServiceDescriptor, name: str) -> MethodDescriptor:
    method = service.methods_by_name.get(name)
    if method is None:
        raise LookupError(f"{service.full_name} has no method {name}")
    return method


def _is_type(fd: FieldDescriptor, target: Descriptor) -> bool:
    desc = message_type(fd)
    return desc is not None and desc.full_name == target.full_name


def _field_of_type(message: Descriptor, target: Descriptor, *, repeated: bool = False) -> str:
    for fd in message.fields:
        if _is_type(fd, target) and is_repeated(fd) == repeated:
            return str(fd.name)
    raise LookupError(f"{message.full_name} has no {'repeated ' if repeated else ''}{target.full_name} field")


def bind(route: ResourceRoute) -> BoundResource:
    """Resolve a table entry against the descriptors; fails loudly if the protos do not fit the pattern."""
    pool = _pool()
    service = pool.FindServiceByName(route.service)
    message = pool.FindMessageTypeByName(f"{service.full_name.rsplit('.', 1)[0]}.{route.message}")
    create = _method(service, f"Create{route.message}")
    list_candidates = [
        m
        for m in service.methods
        if m.name.startswith("List") and any(_is_type(fd, message) and is_repeated(fd) for fd in m.output_type.fields)
    ]
    if len(list_candidates) != 1:
        raise LookupError(f"{service.full_name}: expected one List method returning {message.full_name}")
    list_method = list_candidates[0]
    bound = BoundResource(
        route=route,
        service=service,
        message=message,
        field=_field_of_type(create.input_type, message),
        create=create,
        get=_method(service, f"Get{route.message}"),
        update=_method(service, f"Update{route.message}"),
        delete=_method(service, f"Delete{route.message}"),
        list_method=list_method,
        items_field=_field_of_type(list_method.output_type, message, repeated=True),
    )
    update_in = bound.update.input_type.fields_by_name
    if "update_mask" not in update_in or bound.field not in update_in:
        raise LookupError(f"{bound.update.full_name} needs {bound.field} and update_mask")
    if "id" not in bound.get.input_type.fields_by_name or "id" not in bound.delete.input_type.fields_by_name:
        raise LookupError(f"{service.full_name}: Get/Delete requests need an id")
    return bound


@dataclass(frozen=True)
class BoundSingleton:
    route: SingletonRoute
    service: ServiceDescriptor
    method: MethodDescriptor

    @property
    def service_key(self) -> str:
        return service_key(self.service)


def bind_singleton(route: SingletonRoute) -> BoundSingleton:
    service = _pool().FindServiceByName(route.service)
    return BoundSingleton(route=route, service=service, method=_method(service, route.method))


def bound_resources() -> list[BoundResource]:
    return [bind(r) for r in RESOURCES]


def bound_singletons() -> list[BoundSingleton]:
    return [bind_singleton(s) for s in SINGLETONS]


def scope_resources() -> list[str]:
    """Every resource key an API-client scope may name."""
    from crm_gateway.rest.methods import METHOD_ROUTES

    keys = [r.plural for r in RESOURCES] + [s.scope for s in SINGLETONS] + [m.scope for m in METHOD_ROUTES] + ["users"]
    return list(dict.fromkeys(keys))


# --- calling the service ------------------------------------------------------------------------------


def _invoke(
    service: ServiceDescriptor,
    method: MethodDescriptor,
    req: Message,
    resource_field: str = "",
    *,
    deadline_seconds: float | None = None,
    endpoint: str = "",
) -> Any:
    """Call `method` in the caller's cell; `endpoint` names the service to call when the proto service is
    served by several (crm.common.v1.AuditService), else it follows from the service name."""
    gateway = current_gateway()
    caller = current_caller()
    key = endpoint or service_key(service)
    try:
        return gateway.upstream.call(
            tenant_id=caller.tenant_id,
            service_key=key,
            method=method,
            request=req,
            bearer_token=current_token(),
            request_id=g.get("request_id", ""),
            deadline_seconds=deadline_seconds,
        )
    except grpc.RpcError as exc:
        raise problem_from_rpc_error(exc, service=key, resource_field=resource_field) from None
    except UnknownTenant:
        raise Problem(
            403, detail="the tenant of this token is not served here", type=problem_type("forbidden")
        ) from None
    except UnknownCell as exc:
        raise Problem(
            503, detail=f"the tenant's cell is not configured: {exc}", type=problem_type("unavailable")
        ) from None


def _etag(message: Message) -> dict[str, str]:
    version = getattr(message, "version", 0) if "version" in message.DESCRIPTOR.fields_by_name else 0
    return {"ETag": f'"{version}"'} if version else {}


_IF_MATCH = re.compile(r'^\s*(?:W/)?"?(\d{1,10})"?\s*$')


def _version_from_if_match() -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    match = _IF_MATCH.match(raw)
    if match is None or int(match.group(1)) > 2**31 - 1:
        raise validation_problem([FieldError("If-Match", 'must be a version ETag such as "3"')])
    return int(match.group(1))


def _check_version(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**31 - 1:
        raise validation_problem([FieldError(field, "must be a non-negative 32-bit integer")])
    return value


def _pick_version(from_body: int | None) -> int | None:
    header = _version_from_if_match()
    if from_body is not None and header is not None and from_body != header:
        raise validation_problem([FieldError("version", "disagrees with the If-Match header")])
    return from_body if from_body is not None else header


# --- handlers, generated per resource -----------------------------------------------------------------


def _words(message_name: str) -> str:
    """CustomFieldDefinition -> "custom field definition"."""
    return _snake(message_name).replace("_", " ")


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _create_options(res: BoundResource) -> list[FieldDescriptor]:
    """The create request's own scalar fields beside the resource (CreateContact's `allow_duplicate`): query
    parameters of the POST, so that the body stays the resource itself."""
    return query_fields(res.create.input_type, exclude=(res.field,))


def _create_view(res: BoundResource) -> Callable[[], Response]:
    msg_cls = GetMessageClass(res.message)
    req_cls = GetMessageClass(res.create.input_type)

    options = [fd.name for fd in _create_options(res)]

    def view() -> Response:
        req = req_cls()
        parse_query(request.args, req, allowed=options)
        body = read_json_object()
        resource = msg_cls()
        parse_fields(body, resource, drop=res.ignored_on_input | {"version"})
        getattr(req, res.field).CopyFrom(resource)
        created = _invoke(res.service, res.create, req, res.field)
        location = f"{API}/{res.plural}/{created.id}"
        return json_response(to_json(created), 201, {"Location": location, **_etag(created)})

    return view


def _get_view(res: BoundResource) -> Callable[[str], Response]:
    req_cls = GetMessageClass(res.get.input_type)

    def view(id: str) -> Response:
        _no_query_parameters()
        found = _invoke(res.service, res.get, req_cls(id=id), res.field)
        return json_response(to_json(found), 200, _etag(found))

    return view


def _no_query_parameters(*allowed: str) -> None:
    """GET one, PATCH and DELETE take no query parameters but `allowed`: any other (`?update_mask=`, a typo)
    would be silently ignored."""
    unknown = [k for k in request.args if k not in allowed]
    if unknown:
        raise validation_problem([FieldError(k, "unknown query parameter") for k in unknown])


def _merge_patch_paths(descriptor: Descriptor, body: dict[str, Any], paths: list[str]) -> list[str]:
    """The update mask of a PATCH body, as JSON merge patch (RFC 7396) reads it: a map field given as an
    object changes only the keys it names (`custom_fields.<key>`; a null value removes that key), so a
    client can set one custom field without resending, or racing, the others."""
    out: list[str] = []
    for path in paths:
        fd = descriptor.fields_by_name[path]
        value = body.get(path)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry and isinstance(value, dict):
            out.extend(f"{path}.{key}" for key in value)
        else:
            out.append(path)
    return out


def _update_view(res: BoundResource) -> Callable[[str], Response]:
    msg_cls = GetMessageClass(res.message)
    req_cls = GetMessageClass(res.update.input_type)

    def view(id: str) -> Response:
        _no_query_parameters()
        body = read_json_object()
        body_version = _check_version(body["version"], "version") if "version" in body else None
        version = _pick_version(body_version)
        resource: Any = msg_cls()
        paths = parse_fields(body, resource, drop=res.ignored_on_input | {"version"})
        if not paths:
            raise validation_problem([FieldError("body", "name at least one field to change")])
        resource.id = id
        if version is not None and res.has_version:
            resource.version = version
        paths = _merge_patch_paths(cast(Descriptor, msg_cls.DESCRIPTOR), body, paths)
        req = req_cls(**{res.field: resource, "update_mask": field_mask_pb2.FieldMask(paths=paths)})
        updated = _invoke(res.service, res.update, req, res.field)
        return json_response(to_json(updated), 200, _etag(updated))

    return view


def _delete_view(res: BoundResource) -> Callable[[str], Response]:
    req_cls = GetMessageClass(res.delete.input_type)

    def view(id: str) -> Response:
        _no_query_parameters("version")
        query_version: int | None = None
        if "version" in request.args:
            raw = request.args["version"]
            if not re.fullmatch(r"\d{1,10}", raw):
                raise validation_problem([FieldError("version", "must be a non-negative 32-bit integer")])
            query_version = _check_version(int(raw), "version")
        version = _pick_version(query_version)
        req: Any = req_cls(id=id)
        if version is not None and "version" in req.DESCRIPTOR.fields_by_name:
            req.version = version
        _invoke(res.service, res.delete, req, res.field)
        return Response(status=204)

    return view


def _list_view(res: BoundResource) -> Callable[[], Response]:
    req_cls = GetMessageClass(res.list_method.input_type)
    allowed = [fd.name for fd in res.list_filters]

    def view() -> Response:
        req = req_cls()
        parse_query(request.args, req, allowed=allowed)
        reply = _invoke(res.service, res.list_method, req, res.field)
        body = to_json(reply)
        items = body.pop(res.items_field, [])
        return json_response({"items": items, **body})

    return view


def _singleton_view(single: BoundSingleton) -> Callable[[], Response]:
    req_cls = GetMessageClass(single.method.input_type)
    allowed = [fd.name for fd in query_fields(single.method.input_type)]

    def view() -> Response:
        req = req_cls()
        parse_query(request.args, req, allowed=allowed)
        return json_response(to_json(_invoke(single.service, single.method, req)))

    return view


# --- registration and documentation -------------------------------------------------------------------


def _query_params(fields: list[FieldDescriptor]) -> tuple[Param, ...]:
    from crm_gateway.openapi import field_schema

    return tuple(Param(fd.name, "query", field_schema(fd), describe(fd.name)) for fd in fields)


_ID = Param("id", "path", {"type": "string"}, "the resource id (UUIDv7)", required=True)
_IF_MATCH_PARAM = Param(
    "If-Match", "header", {"type": "string"}, 'expected version as an ETag, e.g. "3" (optimistic concurrency)'
)
_LOCATION = {"Location": "URL of the created resource", "ETag": "the resource version"}


def register(app: Flask) -> None:
    for res in bound_resources():
        _register_resource(app, res)
    for single in bound_singletons():
        path = f"{API}{single.route.path}"
        name = single.route.method[0].lower() + single.route.method[1:]
        op = Operation(
            rule=path,
            method="GET",
            operation_id=name,
            summary=single.route.summary,
            tag=single.route.scope,
            scope=single.route.scope,
            params=_query_params(query_fields(single.method.input_type)),
            replies={
                200: Reply("OK", ref(single.method.output_type.full_name)),
                **_upstream_errors(),
                **standard_errors(),
            },
            messages=(single.method.output_type,),
            description=f"gRPC {single.method.full_name}",
        )
        add_route(app, op, _singleton_view(single))


def _upstream_errors() -> dict[int, Reply]:
    from crm_gateway.rest.registry import problem_reply

    return {503: problem_reply("the service is unavailable or timed out", {"Retry-After": "seconds"})}


def _register_resource(app: Flask, res: BoundResource) -> None:
    from crm_gateway.rest.registry import problem_reply

    base = f"{API}/{res.plural}"
    x = res.route.message
    schema = ref(res.message.full_name)
    input_schema = ref(f"{res.message.full_name}.Input")
    common = {**_upstream_errors(), **standard_errors()}
    not_found = {404: problem_reply("no such resource in this tenant")}
    conflict = {409: problem_reply("stale version or conflicting state (errors name `version`)")}
    tag = res.plural
    ops: list[tuple[Operation, Callable[..., Response]]] = [
        (
            Operation(
                rule=base,
                method="POST",
                operation_id=f"create{x}",
                admin_only=res.route.admin_writes,
                summary=f"Create {_a(_words(x))}",
                tag=tag,
                scope=res.plural,
                request_body=input_schema,
                params=_query_params(_create_options(res)),
                replies={201: Reply("Created", schema, headers=_LOCATION), **conflict, **common},
                messages=(res.message,),
                description=f"gRPC {res.create.full_name}. Server-owned fields are ignored.",
            ),
            _create_view(res),
        ),
        (
            Operation(
                rule=base,
                method="GET",
                operation_id=f"list{res.list_method.name.removeprefix('List')}",
                summary=f"List {res.plural.replace('-', ' ')}",
                tag=tag,
                scope=res.plural,
                params=_query_params(res.list_filters),
                replies={200: Reply("A page of items", ref(f"{res.message.full_name}.Page")), **common},
                messages=(res.message,),
                description=f"gRPC {res.list_method.full_name}. Pass next_page_token as page_token for more.",
            ),
            _list_view(res),
        ),
        (
            Operation(
                rule=f"{base}/<id>",
                method="GET",
                operation_id=f"get{x}",
                summary=f"Get one {_words(x)}",
                tag=tag,
                scope=res.plural,
                params=(_ID,),
                replies={200: Reply("OK", schema, headers={"ETag": "the version"}), **not_found, **common},
                messages=(res.message,),
                description=f"gRPC {res.get.full_name}",
            ),
            _get_view(res),
        ),
        (
            Operation(
                rule=f"{base}/<id>",
                method="PATCH",
                operation_id=f"update{x}",
                admin_only=res.route.admin_writes,
                summary=f"Change some fields of {_a(_words(x))}",
                tag=tag,
                scope=res.plural,
                params=(_ID, _IF_MATCH_PARAM),
                request_body=input_schema,
                replies={200: Reply("Updated", schema), **not_found, **conflict, **common},
                messages=(res.message,),
                description=(
                    f"gRPC {res.update.full_name}; update_mask = the body's keys. A map field (such as "
                    "`custom_fields`) is merged key by key as in JSON merge patch (RFC 7396): keys not in the "
                    "body keep their value, and a null value removes its key. "
                    "`version` (body) or If-Match enables optimistic concurrency."
                ),
            ),
            _update_view(res),
        ),
        (
            Operation(
                rule=f"{base}/<id>",
                method="DELETE",
                operation_id=f"delete{x}",
                admin_only=res.route.admin_writes,
                summary=f"Delete {_a(_words(x))}",
                tag=tag,
                scope=res.plural,
                params=(
                    _ID,
                    Param("version", "query", {"type": "integer", "format": "int32", "minimum": 0}),
                    _IF_MATCH_PARAM,
                ),
                replies={204: Reply("Deleted"), **not_found, **conflict, **common},
                description=f"gRPC {res.delete.full_name}",
            ),
            _delete_view(res),
        ),
    ]
    for op, view in ops:
        add_route(app, op, view)
