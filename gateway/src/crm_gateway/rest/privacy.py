"""GET /api/v1/contacts/{id}/export: everything the platform holds about a person, from every service.

The one hand-written REST handler: it is a fan-out, not a mapping of one RPC. It calls
crm.common.v1.PersonalDataService/ExportPersonalData on every service of the tenant's cell (each service
answers for its own database, with the caller's token, and checks the caller's role itself) and returns one
JSON document keyed by service:

    {"contact_id": "...", "exported_at": "...", "erased": false, "erased_at": null, "erasure_pending": [],
     "customer": {...}, "sales": {...}, "marketing": {...}, "servicedesk": {...}, "analytics": {...}}

The customer service is asked first: a contact that is not the tenant's is 404, a member is 403, and
nothing else is asked. An export is complete or it is an error: if any service cannot answer, the
response is that service's problem (503 with Retry-After when it is unavailable), never a partial
document. After an erasure the document holds only what remains (tombstones, PII-free records) and
`erasure_pending` lists the services that have not processed the erasure yet.

Erasure and consents are ordinary method routes (crm_gateway.rest.methods).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import grpc
from flask import Flask, Response, g
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor
from opentelemetry import context as otel_context

from crm.common.v1 import personal_data_pb2
from crm_gateway.config import SERVICES
from crm_gateway.rest.convert import json_response, whole_numbers
from crm_gateway.rest.grpc_errors import problem_from_rpc_error
from crm_gateway.rest.guard import current_caller, current_token
from crm_gateway.rest.problems import Problem, problem_type
from crm_gateway.rest.registry import Operation, Param, Reply, add_route, problem_reply, standard_errors
from crm_gateway.rest.resources import API
from crm_gateway.routing.cells import UnknownCell, UnknownTenant
from crm_gateway.runtime import Gateway, current_gateway

OWNER = "customer"  # the service that knows whether the contact exists
EXPORT = personal_data_pb2.DESCRIPTOR.services_by_name["PersonalDataService"].methods_by_name["ExportPersonalData"]


class _Fanout:
    """What the calls need, captured in the request thread (workers have no Flask context)."""

    def __init__(self, gateway: Gateway, tenant_id: str, token: str, request_id: str) -> None:
        self.gateway = gateway
        self.tenant_id = tenant_id
        self.token = token
        self.request_id = request_id
        self.trace = otel_context.get_current()

    def call(self, service: str, method: MethodDescriptor, contact_id: str) -> Any:
        attached = otel_context.attach(self.trace)
        try:
            return self.gateway.upstream.call(
                tenant_id=self.tenant_id,
                service_key=service,
                method=method,
                request=personal_data_pb2.ExportPersonalDataRequest(contact_id=contact_id),
                bearer_token=self.token,
                request_id=self.request_id,
            )
        except grpc.RpcError as exc:
            raise problem_from_rpc_error(exc, service=service) from None
        except UnknownTenant:
            detail = "the tenant of this token is not served here"
            raise Problem(403, detail=detail, type=problem_type("forbidden")) from None
        except UnknownCell as exc:
            detail = f"the tenant's cell is not configured: {exc}"
            raise Problem(503, detail=detail, type=problem_type("unavailable")) from None
        finally:
            otel_context.detach(attached)


def export_contact(id: str) -> Response:
    fanout = _Fanout(current_gateway(), current_caller().tenant_id, current_token(), g.get("request_id", ""))
    answers: dict[str, Any] = {OWNER: fanout.call(OWNER, EXPORT, id)}
    others = [s for s in SERVICES if s != OWNER]
    with ThreadPoolExecutor(max_workers=len(others), thread_name_prefix="export") as pool:
        futures = {s: pool.submit(fanout.call, s, EXPORT, id) for s in others}
        for service in others:
            answers[service] = futures[service].result()  # re-raises that service's Problem
    owner = answers[OWNER]
    erased_at = owner.data["erased_at"] if owner.erased and "erased_at" in owner.data else None
    document: dict[str, Any] = {
        "contact_id": id,
        "exported_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "erased": owner.erased,
        "erased_at": erased_at,
        "erasure_pending": [s for s in SERVICES if owner.erased and not answers[s].erased],
    }
    for service in SERVICES:
        data = whole_numbers(json_format.MessageToDict(answers[service].data))
        data.pop("erased_at", None)
        document[service] = data
    return json_response(document)


SERVICE_DOC = {
    "type": "object",
    "description": "what the service holds, by kind of record",
    "additionalProperties": True,
}
EXPORT_SCHEMA = {
    "type": "object",
    "title": "PersonalDataExport",
    "required": ["contact_id", "exported_at", "erased", "erasure_pending", *SERVICES],
    "properties": {
        "contact_id": {"type": "string"},
        "exported_at": {"type": "string", "format": "date-time"},
        "erased": {"type": "boolean", "description": "the person was erased (only tombstones remain)"},
        "erased_at": {"type": ["string", "null"], "format": "date-time"},
        "erasure_pending": {
            "type": "array",
            "items": {"type": "string", "enum": list(SERVICES)},
            "description": "services that have not processed the erasure yet",
        },
        **{service: SERVICE_DOC for service in SERVICES},
    },
}


def register(app: Flask) -> None:
    op = Operation(
        rule=f"{API}/contacts/<id>/export",
        method="GET",
        operation_id="exportContactPersonalData",
        summary="Everything the platform holds about a person, from every service (admins and managers)",
        tag="contacts",
        scope="contacts",
        params=(Param("id", "path", {"type": "string"}, "the contact id", required=True),),
        replies={
            200: Reply("One document keyed by service", EXPORT_SCHEMA),
            404: problem_reply("no such contact in this tenant"),
            503: problem_reply("a service is unavailable: no partial export is returned", {"Retry-After": "seconds"}),
            **standard_errors(),
        },
        description=(
            "Calls crm.common.v1.PersonalDataService/ExportPersonalData on every service of the tenant's cell "
            "and returns their answers keyed by service. Members get 403."
        ),
    )
    add_route(app, op, export_contact)
