"""Custom methods (AIP-136) over REST, generated from ONE table: METHOD_ROUTES.

Each MethodRoute maps an HTTP method and a path below /api/v1 to one unary gRPC method; the request
mapping, the response rendering and the OpenAPI entry are read from the descriptors. Add an endpoint by
adding one entry (and the proto module to resources.PROTO_MODULES), never a handler:

    MethodRoute(
        "POST", "/contacts/{id}/merge", "crm.customer.v1.MergeService", "MergeContacts",
        scope="contacts", summary="Merge a duplicate into this contact", body="*",
    ),

Request mapping
  - `{field}` in the path sets the request field of that name (typed from the descriptor; it wins over
    the same key in a body, which is ignored).
  - body="*": the JSON body maps onto the request's fields; an empty body is {}. No query parameters.
  - body="<field>": the JSON body maps onto that message field; query parameters set the other scalars.
  - body=None: no body; query parameters set the remaining scalar and repeated-scalar fields.
  - upload_field="<bytes field>": the body is the raw file (any media type) or the `file` part of a
    multipart/form-data body; query parameters (and multipart text fields) set the other fields. The
    request's `filename` and `content_type` string fields, when it has them and they are not given,
    receive the upload's file name and media type. Limit: GATEWAY_MAX_UPLOAD_BYTES (others: 1 MiB).
  Unknown fields or parameters and values of the wrong type are a 400 problem naming each one.

Response mapping
  - google.protobuf.Empty -> 204 without a body.
  - a message with exactly {content_type: string, filename: string, content: bytes} -> the bytes as a
    download (that Content-Type, Content-Disposition: attachment; filename=...).
  - any other message -> JSON as for resources (proto field names, defaults printed), with `status`,
    plus an ETag when it carries a version.
gRPC errors map exactly as for resources (grpc_errors.problem_from_rpc_error).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, request
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from werkzeug.datastructures import MultiDict

from crm_gateway.rest.convert import (
    is_repeated,
    json_response,
    message_type,
    parse_fields,
    parse_query,
    query_fields,
    read_json_object,
    to_json,
)
from crm_gateway.rest.param_docs import describe
from crm_gateway.rest.problems import FieldError, validation_problem
from crm_gateway.rest.registry import Operation, Param, Reply, Schema, add_route, problem_reply, standard_errors
from crm_gateway.rest.resources import API, _invoke, _pool, service_key
from crm_gateway.runtime import current_gateway

HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
EMPTY = "google.protobuf.Empty"
FILE_FIELDS = {
    "content_type": FieldDescriptor.TYPE_STRING,
    "filename": FieldDescriptor.TYPE_STRING,
    "content": FieldDescriptor.TYPE_BYTES,
}
UPLOAD_PART = "file"
OCTET_STREAM = "application/octet-stream"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MEDIA_TYPE = re.compile(r'^[\w.+-]+/[\w.+-]+(\s*;\s*[\w.+-]+=("[^"\r\n]*"|[\w.+-]+))*$')


@dataclass(frozen=True)
class MethodRoute:
    http_method: str  # GET, POST, PUT, PATCH, DELETE
    path: str  # below /api/v1, with {field} placeholders: "/contacts/{id}/merge"
    service: str  # full proto service name: "crm.customer.v1.CustomerService"
    method: str  # RPC name: "MergeContacts"
    scope: str  # API-client scope resource key: "contacts"
    summary: str
    body: str | None = None  # "*" = whole request, "<field>" = that message field, None = query only
    status: int = 200  # success status of a non-Empty, non-file response
    write: bool | None = None  # API clients need <scope>:write; None = every method but GET writes
    admin_only: bool = False  # the admin role is required (403 problem otherwise)
    upload_field: str | None = None  # bytes field receiving an uploaded file (raw body or multipart `file`)
    media_types: tuple[str, ...] = ()  # documented media types of the upload or download, e.g. "text/csv"
    deadline_seconds: float | None = None  # gRPC deadline; None = GATEWAY_GRPC_DEADLINE_SECONDS
    operation_id: str = ""  # OpenAPI operationId / Flask endpoint; default: the RPC name in lowerCamelCase
    description: str = ""
    # The service (cell endpoint) to call; default: from the proto service name (crm.<endpoint>.v1.X). Set
    # it for a proto service that every service serves, such as crm.common.v1.AuditService.
    endpoint: str = ""

    @property
    def is_write(self) -> bool:
        return self.http_method.upper() != "GET" if self.write is None else self.write


# Every service serves its own audit log (crm_kit.audit); admins and managers only, the service checks.
AUDIT = "crm.common.v1.AuditService"
PRIVACY = "crm.customer.v1.PrivacyService"
DEDUPE = "crm.customer.v1.DedupeService"
TRANSFER = "crm.customer.v1.TransferService"

# THE table. One entry per custom REST endpoint; see the module docstring.
METHOD_ROUTES: tuple[MethodRoute, ...] = (
    MethodRoute(
        "GET", "/contacts/{entity_id}/audit", AUDIT, "ListAuditEntries", scope="audit", endpoint="customer",
        summary="The audit trail of one contact, newest first (admins and managers)",
        operation_id="listContactAuditEntries",
    ),
    MethodRoute(
        "GET", "/accounts/{entity_id}/audit", AUDIT, "ListAuditEntries", scope="audit", endpoint="customer",
        summary="The audit trail of one account, newest first (admins and managers)",
        operation_id="listAccountAuditEntries",
    ),
    MethodRoute(
        "GET", "/opportunities/{entity_id}/audit", AUDIT, "ListAuditEntries", scope="audit", endpoint="sales",
        summary="The audit trail of one opportunity, newest first (admins and managers)",
        operation_id="listOpportunityAuditEntries",
    ),
    MethodRoute(
        "GET", "/campaigns/{entity_id}/audit", AUDIT, "ListAuditEntries", scope="audit", endpoint="marketing",
        summary="The audit trail of one campaign, newest first (admins and managers)",
        operation_id="listCampaignAuditEntries",
    ),
    MethodRoute(
        "GET", "/tickets/{entity_id}/audit", AUDIT, "ListAuditEntries", scope="audit", endpoint="servicedesk",
        summary="The audit trail of one ticket, newest first (admins and managers)",
        operation_id="listTicketAuditEntries",
    ),
    MethodRoute(
        "GET", "/audit/customer", AUDIT, "ListAuditEntries", scope="audit", endpoint="customer",
        summary="The customer service's audit log, newest first (?entity=&entity_id=&actor=&start_time=)",
        operation_id="listCustomerAuditEntries",
    ),
    MethodRoute(
        "GET", "/audit/sales", AUDIT, "ListAuditEntries", scope="audit", endpoint="sales",
        summary="The sales service's audit log, newest first (?entity=&entity_id=&actor=&start_time=)",
        operation_id="listSalesAuditEntries",
    ),
    MethodRoute(
        "GET", "/audit/marketing", AUDIT, "ListAuditEntries", scope="audit", endpoint="marketing",
        summary="The marketing service's audit log, newest first (?entity=&entity_id=&actor=&start_time=)",
        operation_id="listMarketingAuditEntries",
    ),
    MethodRoute(
        "GET", "/audit/servicedesk", AUDIT, "ListAuditEntries", scope="audit", endpoint="servicedesk",
        summary="The servicedesk service's audit log, newest first (?entity=&entity_id=&actor=&start_time=)",
        operation_id="listServicedeskAuditEntries",
    ),
    MethodRoute(
        "GET", "/contacts/{contact_id}/timeline", "crm.customer.v1.TimelineService", "ListTimeline",
        scope="contacts", summary="A contact's interaction timeline, newest first (?kind=call&kind=ticket)",
        operation_id="listContactTimeline",
    ),
    MethodRoute(
        "POST", "/contacts/{contact_id}/interactions", "crm.customer.v1.TimelineService", "CreateInteraction",
        scope="contacts", summary="Record a call, email, meeting or note with a contact", body="interaction",
        status=201, operation_id="createContactInteraction",
    ),
    # Privacy (crm.customer.v1.PrivacyService); the export is the fan-out in rest/privacy.py.
    MethodRoute(
        "POST", "/contacts/{id}/erase", PRIVACY, "EraseContact", scope="contacts", body="*",
        summary="Erase a person everywhere: the contact becomes a tombstone (admins and managers)",
        operation_id="eraseContact",
        description="Every service removes or anonymises what it holds on crm.customer.contact.erased.",
    ),
    MethodRoute(
        "GET", "/contacts/{contact_id}/consents", PRIVACY, "ListConsents", scope="contacts",
        summary="A contact's current consent per channel, and the history of changes",
        operation_id="listContactConsents",
    ),
    MethodRoute(
        "PUT", "/contacts/{contact_id}/consents/{channel}", PRIVACY, "SetConsent", scope="contacts", body="*",
        summary="Record a change of one channel's consent (status, source, captured_at, evidence)",
        operation_id="putContactConsent",
    ),
    MethodRoute(
        "POST", "/contacts/{contact_id}/consents", PRIVACY, "SetConsent", scope="contacts", body="*", status=201,
        summary="Record a change of a channel's consent (channel, status, source, captured_at, evidence)",
        operation_id="addContactConsent",
    ),
    # The customer record (crm.customer.v1.CustomerService).
    MethodRoute(
        "GET", "/contacts/{contact_id}/history", "crm.customer.v1.CustomerService", "ListContactHistory",
        scope="contacts", summary="Changes of a contact's owner, classification and lifecycle stage, newest first",
        operation_id="listContactHistory",
    ),
    MethodRoute(
        "GET", "/customer-settings", "crm.customer.v1.CustomerService", "GetCustomerSettings",
        scope="customer-settings", admin_only=True, summary="The tenant's customer-record settings (admins)",
    ),
    MethodRoute(
        "PATCH", "/customer-settings", "crm.customer.v1.CustomerService", "UpdateCustomerSettings",
        scope="customer-settings", admin_only=True, body="*",
        summary="Change some customer-record settings (admins); settings not in the body keep their value",
    ),
    # Duplicates and merges (crm.customer.v1.DedupeService).
    MethodRoute(
        "GET", "/contacts/{contact_id}/duplicates", DEDUPE, "FindDuplicates", scope="contacts",
        summary="A contact's likely duplicates with their scores and reasons, best first (?min_score=)",
        operation_id="listContactDuplicates",
    ),
    MethodRoute(
        "POST", "/contacts/{id}/merge", DEDUPE, "MergeContacts", scope="contacts", body="*",
        summary="Merge a duplicate into this contact ({\"duplicate_id\": ..., \"field_choices\": {...}})",
        operation_id="mergeContacts",
    ),
    MethodRoute(
        "GET", "/contacts/{contact_id}/merges", DEDUPE, "ListContactMerges", scope="contacts",
        summary="The merges a contact took part in, newest first", operation_id="listContactMerges",
    ),
    MethodRoute(
        "POST", "/contact-merges/{merge_id}/unmerge", DEDUPE, "UnmergeContacts", scope="contacts", body="*",
        summary="Undo a merge within its retention window: the duplicate comes back",
        operation_id="unmergeContacts",
    ),
    MethodRoute(
        "POST", "/dedupe-jobs", DEDUPE, "StartDedupeJob", scope="contacts", body="*", status=202,
        summary="Start a dedupe job over the whole tenant (admins and managers)", operation_id="startDedupeJob",
    ),
    MethodRoute(
        "GET", "/dedupe-jobs/{id}", DEDUPE, "GetDedupeJob", scope="contacts",
        summary="A dedupe job's status and progress", operation_id="getDedupeJob",
    ),
    MethodRoute(
        "GET", "/dedupe-jobs/{job_id}/pairs", DEDUPE, "ListDuplicatePairs", scope="contacts",
        summary="The pairs a dedupe job found, best first (?min_score=&page_size=&page_token=)",
        operation_id="listDuplicatePairs",
    ),
    # Contact import and export (crm.customer.v1.TransferService). /contacts/export is a static path, so
    # it is matched before the resource route /contacts/{id}.
    MethodRoute(
        "POST", "/contact-imports", TRANSFER, "StartImport", scope="contacts", upload_field="content", status=202,
        media_types=("text/csv", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        summary="Start a contact import job from a CSV or XLSX file (?dry_run=true&format=csv&mapping=...)",
        operation_id="startContactImport", deadline_seconds=120,
        description="Poll GET /contact-imports/{id} for status, counts and progress.",
    ),
    MethodRoute(
        "GET", "/contact-imports/{id}", TRANSFER, "GetImportJob", scope="contacts",
        summary="An import job's status, counts, progress and first problems", operation_id="getContactImport",
    ),
    MethodRoute(
        "GET", "/contact-imports/{job_id}/problems", TRANSFER, "ListImportProblems", scope="contacts",
        summary="Every problem of an import job, in row order", operation_id="listContactImportProblems",
    ),
    MethodRoute(
        "GET", "/contact-imports/{id}/report", TRANSFER, "GetImportReport", scope="contacts",
        media_types=("text/csv",), summary="Every problem of an import job as CSV (row, column, field, value, problem)",
        operation_id="getContactImportReport",
    ),
    MethodRoute(
        "GET", "/contacts/export", TRANSFER, "ExportContacts", scope="contacts", deadline_seconds=300,
        media_types=("text/csv", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        summary="Export the contacts a list with the same filters returns (?format=xlsx&q=...&tag=...)",
        operation_id="exportContacts",
    ),
)


@dataclass(frozen=True)
class BoundMethod:
    """A MethodRoute with its descriptors resolved and checked."""

    route: MethodRoute
    service: ServiceDescriptor
    method: MethodDescriptor
    path_fields: tuple[str, ...]
    query_fields: tuple[FieldDescriptor, ...]
    body_message: Descriptor | None  # what the JSON body maps onto (None: no JSON body)

    @property
    def http_method(self) -> str:
        return self.route.http_method.upper()

    @property
    def rule(self) -> str:
        return API + _PLACEHOLDER.sub(r"<\1>", self.route.path)

    @property
    def operation_id(self) -> str:
        return self.route.operation_id or self.route.method[0].lower() + self.route.method[1:]

    @property
    def returns_empty(self) -> bool:
        return bool(self.method.output_type.full_name == EMPTY)

    @property
    def returns_file(self) -> bool:
        return is_file_message(self.method.output_type)

    @property
    def list_field(self) -> FieldDescriptor | None:
        return list_field(self.method.output_type)

    @property
    def upload(self) -> FieldDescriptor | None:
        name = self.route.upload_field
        return self.method.input_type.fields_by_name[name] if name else None


PAGE_TOKEN = "next_page_token"


def list_field(desc: Descriptor) -> FieldDescriptor | None:
    """The repeated field of a list response (one repeated message field, and at most next_page_token
    beside it), whatever its name (`entries`, `changes`...): REST answers it as `items`, as every list."""
    repeated = [fd for fd in desc.fields if is_repeated(fd) and fd.type == FieldDescriptor.TYPE_MESSAGE]
    others = {fd.name for fd in desc.fields} - {fd.name for fd in repeated}
    if len(repeated) != 1 or not others <= {PAGE_TOKEN} or list_item(repeated[0]).GetOptions().map_entry:
        return None
    return repeated[0]


def list_item(fd: FieldDescriptor) -> Descriptor:
    """The message type of a message field."""
    desc = fd.message_type
    assert desc is not None, fd.full_name
    return desc


def is_file_message(desc: Descriptor) -> bool:
    """Exactly {content_type: string, filename: string, content: bytes}, none repeated."""
    fields = {fd.name: fd for fd in desc.fields}
    return set(fields) == set(FILE_FIELDS) and all(
        fields[name].type == kind and not is_repeated(fields[name]) for name, kind in FILE_FIELDS.items()
    )


def bind_method(route: MethodRoute) -> BoundMethod:
    """Resolve a table entry against the descriptors; fails loudly when the route does not fit them."""
    where = f"MethodRoute {route.http_method} {route.path}"
    if route.http_method.upper() not in HTTP_METHODS:
        raise ValueError(f"{where}: unsupported HTTP method")
    if not route.path.startswith("/") or route.path.startswith(API):
        raise ValueError(f"{where}: the path must start with / and be relative to {API}")
    service = _pool().FindServiceByName(route.service)
    if not route.endpoint:
        service_key(service)  # the cell endpoint must be derivable from the service name
    method = service.methods_by_name.get(route.method)
    if method is None:
        raise LookupError(f"{where}: {service.full_name} has no method {route.method}")
    if method.client_streaming or method.server_streaming:
        raise ValueError(f"{where}: only unary methods are supported")
    request_desc = method.input_type
    fields = request_desc.fields_by_name
    path_fields = tuple(_PLACEHOLDER.findall(route.path))
    for name in path_fields:
        fd = fields.get(name)
        if fd is None or message_type(fd) is not None or is_repeated(fd):
            raise LookupError(f"{where}: {{{name}}} is not a scalar field of {request_desc.full_name}")
    if len(set(path_fields)) != len(path_fields):
        raise ValueError(f"{where}: a path field appears twice")
    body_message: Descriptor | None = None
    excluded = set(path_fields)
    if route.upload_field is not None:
        upload = fields.get(route.upload_field)
        if upload is None or upload.type != FieldDescriptor.TYPE_BYTES or is_repeated(upload):
            raise LookupError(f"{where}: {route.upload_field} is not a bytes field of {request_desc.full_name}")
        if route.body is not None:
            raise ValueError(f"{where}: an upload route takes no JSON body")
        excluded.add(route.upload_field)
    if route.body == "*":
        body_message = request_desc
    elif route.body is not None:
        fd = fields.get(route.body)
        sub = message_type(fd) if fd is not None else None
        if fd is None or sub is None or is_repeated(fd) or sub.GetOptions().map_entry:
            raise LookupError(f"{where}: body {route.body!r} is not a message field of {request_desc.full_name}")
        body_message = sub
        excluded.add(route.body)
    queries = () if route.body == "*" else tuple(query_fields(request_desc, exclude=excluded))
    bound = BoundMethod(route, service, method, path_fields, queries, body_message)
    if route.upload_field is not None and route.http_method.upper() in ("GET", "DELETE"):
        raise ValueError(f"{where}: uploads need POST, PUT or PATCH")
    return bound


def bound_methods(routes: Iterable[MethodRoute] = METHOD_ROUTES) -> list[BoundMethod]:
    return [bind_method(r) for r in routes]


# --- the request --------------------------------------------------------------------------------------


def _has_body() -> bool:
    return bool(request.get_data(cache=True).strip())


def _fill_path(req: Message, path: dict[str, str], names: Iterable[str]) -> None:
    parse_query(MultiDict(path), req, allowed=names)


def _upload(bm: BoundMethod, req: Any, params: MultiDict[str, str]) -> MultiDict[str, str]:
    """Put the uploaded bytes into the upload field; return the parameters still to apply."""
    field = bm.route.upload_field
    assert field is not None
    request.max_content_length = current_gateway().settings.gateway.max_upload_bytes
    filename = ""
    if request.mimetype == "multipart/form-data":
        unknown = [name for name in request.files if name != UPLOAD_PART]
        if unknown:
            raise validation_problem([FieldError(name, "unknown file part") for name in unknown])
        part = request.files.get(UPLOAD_PART)
        if part is None:
            raise validation_problem([FieldError(UPLOAD_PART, "a multipart/form-data part named file is required")])
        content = part.read()
        filename = part.filename or ""
        media_type = part.mimetype or OCTET_STREAM
        params = MultiDict([*params.items(multi=True), *request.form.items(multi=True)])
    else:
        content = request.get_data(cache=False)
        media_type = request.mimetype or OCTET_STREAM
    if not content:
        raise validation_problem(
            [FieldError(UPLOAD_PART, "the file is empty: send it as the body or as the multipart part `file`")]
        )
    setattr(req, field, content)
    given = set(params)
    fields = req.DESCRIPTOR.fields_by_name
    for name, value in (("filename", filename), ("content_type", media_type)):
        fd = fields.get(name)
        settable = fd is not None and fd.type == FieldDescriptor.TYPE_STRING and not is_repeated(fd)
        if value and settable and name not in given and name != field:
            setattr(req, name, value)
    return params


def _build_request(bm: BoundMethod, path: dict[str, str]) -> Message:
    req: Any = GetMessageClass(bm.method.input_type)()
    params: MultiDict[str, str] = MultiDict(request.args.items(multi=True))
    if bm.route.upload_field is not None:
        params = _upload(bm, req, params)
    elif bm.body_message is None:
        if _has_body():
            raise validation_problem([FieldError("body", "this operation takes no request body")])
    else:
        body = read_json_object() if _has_body() else {}
        target = req if bm.route.body == "*" else getattr(req, str(bm.route.body))
        parse_fields(body, target, drop=bm.path_fields if bm.route.body == "*" else ())
    parse_query(params, req, allowed=[fd.name for fd in bm.query_fields])
    _fill_path(req, path, bm.path_fields)
    return req  # type: ignore[no-any-return]


# --- the response -------------------------------------------------------------------------------------


def _content_disposition(filename: str) -> dict[str, str]:
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip() or "download"
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        simple = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").strip() or "download"
        return {"filename": simple, "filename*": "UTF-8''" + quote(name, safe="!#$&+^`|~")}
    return {"filename": name}


def file_response(reply: Any, status: int) -> Response:
    media_type = reply.content_type.strip()
    if not _MEDIA_TYPE.match(media_type):
        media_type = OCTET_STREAM
    response = Response(bytes(reply.content), status=status, content_type=media_type)
    response.headers.set("Content-Disposition", "attachment", **_content_disposition(reply.filename))
    return response


def _render(bm: BoundMethod, reply: Any) -> Response:
    if bm.returns_empty:
        return Response(status=204)
    if bm.returns_file:
        return file_response(reply, bm.route.status)
    headers: dict[str, str] = {}
    if "version" in reply.DESCRIPTOR.fields_by_name and reply.version:
        headers["ETag"] = f'"{reply.version}"'
    body = to_json(reply)
    listed = bm.list_field
    if listed is not None:
        body = {"items": body.pop(listed.name, []), **body}
    return json_response(body, bm.route.status, headers)


def _view(bm: BoundMethod) -> Callable[..., Response]:
    resource_field = bm.route.body if bm.route.body not in (None, "*") else ""

    def view(**path: str) -> Response:
        req = _build_request(bm, path)
        reply = _invoke(
            bm.service,
            bm.method,
            req,
            resource_field or "",
            deadline_seconds=bm.route.deadline_seconds,
            endpoint=bm.route.endpoint,
        )
        return _render(bm, reply)

    return view


# --- documentation and registration -------------------------------------------------------------------


def _operation(bm: BoundMethod) -> Operation:
    from crm_gateway.openapi import field_schema, message_ref

    route = bm.route
    request_desc = bm.method.input_type
    params = [
        Param(name, "path", field_schema(request_desc.fields_by_name[name]), required=True) for name in bm.path_fields
    ]
    params += [Param(fd.name, "query", field_schema(fd), describe(fd.name)) for fd in bm.query_fields]
    messages: list[Descriptor] = []
    request_body: Schema | None = None
    request_content: dict[str, Schema] = {}
    binary: Schema = {"type": "string", "format": "binary"}
    errors: dict[int, Reply] = {
        404: problem_reply("no such resource in this tenant"),
        409: problem_reply("conflicting state or stale version"),
        503: problem_reply("the service is unavailable or timed out", {"Retry-After": "seconds"}),
        **standard_errors(),
    }
    if bm.body_message is not None:
        request_body = message_ref(bm.body_message)
        messages.append(bm.body_message)
        errors[413] = problem_reply("the request body is larger than 1 MiB")
        errors[415] = problem_reply("the body is not application/json")
    if route.upload_field is not None:
        request_content["multipart/form-data"] = {
            "type": "object",
            "properties": {UPLOAD_PART: binary},
            "required": [UPLOAD_PART],
        }
        for media in route.media_types or (OCTET_STREAM,):
            request_content[media] = binary
        errors[413] = problem_reply("the upload is larger than GATEWAY_MAX_UPLOAD_BYTES")
    if bm.returns_empty:
        success = {204: Reply("Done")}
    elif bm.returns_file:
        types = route.media_types or (OCTET_STREAM,)
        success = {
            route.status: Reply(
                "The file",
                binary,
                types[0],
                headers={"Content-Disposition": "attachment; filename=..."},
                more_content_types=types[1:],
            )
        }
    elif bm.list_field is not None:
        item = list_item(bm.list_field)
        page: Schema = {"type": "object", "properties": {"items": {"type": "array", "items": message_ref(item)}}}
        if PAGE_TOKEN in bm.method.output_type.fields_by_name:
            page["properties"]["next_page_token"] = {"type": "string", "description": "empty on the last page"}
        success = {route.status: Reply("A list of items", page)}
        messages.append(item)
    else:
        success = {route.status: Reply("OK", message_ref(bm.method.output_type))}
        messages.append(bm.method.output_type)
    description = f"gRPC {bm.method.full_name}."
    if route.body == "*" and bm.path_fields:
        description += f" Path fields ({', '.join(bm.path_fields)}) in the body are ignored."
    if route.upload_field is not None:
        description += (
            " Send the file as the raw body or as the multipart/form-data part `file`;"
            " query parameters set the other fields."
        )
    if route.description:
        description += " " + route.description
    return Operation(
        rule=bm.rule,
        method=bm.http_method,
        operation_id=bm.operation_id,
        summary=route.summary,
        tag=route.scope,
        scope=route.scope,
        write=route.is_write,
        admin_only=route.admin_only,
        request_body=request_body,
        request_content=request_content,
        request_body_required=route.upload_field is not None,
        replies={**success, **errors},
        params=tuple(params),
        messages=tuple(messages),
        description=description,
    )


def register(app: Flask, routes: Iterable[MethodRoute] = METHOD_ROUTES) -> None:
    """Register every route of `routes` (the global table unless a test passes its own)."""
    for bm in bound_methods(routes):
        add_route(app, _operation(bm), _view(bm))
