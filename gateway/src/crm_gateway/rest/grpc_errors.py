"""gRPC status -> HTTP problem+json: the gateway's half of the one error mapping (crm_kit.errors is the
services' half). Field violations from google.rpc.BadRequest details become `errors: [{field, message}]`."""

from __future__ import annotations

import logging

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from crm_gateway.rest.problems import FieldError, Problem, problem_type

log = logging.getLogger("crm_gateway.upstream")

RETRY_AFTER_SECONDS = "2"

# code -> (HTTP status, problem type slug)
_MAP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "validation"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "validation"),
    grpc.StatusCode.NOT_FOUND: (404, "not-found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "already-exists"),
    grpc.StatusCode.ABORTED: (409, "conflict"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "failed-precondition"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "forbidden"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthenticated"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate-limited"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (503, "unavailable"),
    grpc.StatusCode.CANCELLED: (503, "unavailable"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not-implemented"),
}


def field_violations(error: grpc.RpcError, strip_prefix: str = "") -> list[FieldError]:
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # status details disagree with the call's code or message
        return []
    if status is None:
        return []
    found: list[FieldError] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for v in bad.field_violations:
                name = v.field
                if strip_prefix and name.startswith(strip_prefix):
                    name = name[len(strip_prefix) :]
                found.append(FieldError(name, v.description))
    return found


def problem_from_rpc_error(error: grpc.RpcError, *, service: str, resource_field: str = "") -> Problem:
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    message: str = error.details() or ""  # type: ignore[attr-defined]
    status, slug = _MAP.get(code, (502, "upstream-error"))
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in message.lower():
        # gRPC's own message size limit (e.g. an import larger than the service accepts), not a rate limit
        return Problem(
            413, detail=f"the message is too large for the {service} service", type=problem_type("payload-too-large")
        )
    if status == 502:
        log.error("upstream error", extra={"service": service, "grpc_code": code.name, "detail": message})
        return Problem(502, detail=f"the {service} service failed", type=problem_type(slug))
    if status in (503, 501):
        log.warning("upstream unavailable", extra={"service": service, "grpc_code": code.name})
        detail = (
            f"the {service} service did not answer in time"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED
            else f"the {service} service is unavailable; retry later"
        )
        if status == 501:
            detail = f"the {service} service does not implement this operation"
        headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else {}
        return Problem(status, detail=detail, type=problem_type(slug), headers=headers)
    errors = field_violations(error, f"{resource_field}." if resource_field else "")
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="crm", error="invalid_token"'
    if status == 429:
        headers["Retry-After"] = RETRY_AFTER_SECONDS
    if code == grpc.StatusCode.ABORTED and not errors:
        errors = [FieldError("version", message or "stale version")]
    title = "Invalid request" if status == 400 else ""
    return Problem(status, detail=message, title=title, type=problem_type(slug), errors=errors, headers=headers)
