"""Per-request hooks: request id and trace context, authentication, tenant pinning, rate limits, scopes.

Authentication is the default: every path under /api/ needs a verified bearer token unless its
Operation is explicitly public. The tenant comes from the token alone; a client-sent X-Tenant-ID or
X-Tenant header may only repeat it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, current_app, g, request
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from crm_gateway.auth.ratelimit import RateLimiter, retry_after_header
from crm_gateway.auth.tokens import Caller
from crm_gateway.metrics import observe_request
from crm_gateway.rest.problems import Problem, problem_type, unauthenticated
from crm_gateway.rest.registry import operations
from crm_gateway.runtime import current_gateway
from crm_kit.auth import bearer_token
from crm_kit.errors import Unauthenticated

log = logging.getLogger("crm_gateway.access")
tracer = trace.get_tracer("crm.gateway.http")

TENANT_HEADERS = ("X-Tenant-ID", "X-Tenant")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,128}$")


def current_caller() -> Caller:
    caller: Caller | None = g.get("caller")
    if caller is None:  # a guarded route always has one; reaching this is a programming error
        raise RuntimeError("no authenticated caller in this request")
    return caller


def current_token() -> str:
    token: str = g.token
    return token


def client_ip() -> str:
    return request.remote_addr or "unknown"


def rate_limited(limiter: RateLimiter, key: str, what: str) -> None:
    wait = limiter.hit(key)
    if wait > 0:
        raise Problem(
            429,
            detail=f"too many requests {what}; retry later",
            type=problem_type("rate-limited"),
            headers={"Retry-After": retry_after_header(wait)},
        )


def _start_request() -> None:
    g.started = time.perf_counter()
    parent = propagate.extract(request.headers)
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    span = tracer.start_span(f"{request.method} {rule}", context=parent, kind=trace.SpanKind.SERVER)
    span.set_attribute("http.request.method", request.method)
    span.set_attribute("url.path", request.path)
    g.otel_span = span
    g.otel_token = otel_context.attach(trace.set_span_in_context(span, parent))
    ctx = span.get_span_context()
    g.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else uuid.uuid4().hex
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _REQUEST_ID.match(incoming) else g.trace_id


def _authenticate() -> None:
    op = operations(current_app).get(request.endpoint or "")
    if op is not None and op.public:
        return
    if op is None and not request.path.startswith("/api/"):
        return  # unknown non-API paths fall through to a 404 problem
    gateway = current_gateway()
    rate_limited(gateway.api_ip_limit, client_ip(), "from this address")
    try:
        token = bearer_token(request.headers.get("Authorization"))
    except Unauthenticated as exc:
        raise unauthenticated(exc.message, invalid_token=False) from None
    try:
        caller = gateway.tokens.verify(token)
    except Unauthenticated as exc:
        raise unauthenticated(exc.message) from None
    for header in TENANT_HEADERS:
        claimed = request.headers.get(header)
        if claimed is not None and claimed.strip() not in (caller.tenant_id, caller.tenant_slug):
            raise Problem(
                403,
                detail=f"{header} does not match the tenant of the token",
                type=problem_type("tenant-mismatch"),
            )
    g.caller = caller
    g.token = token
    trace.get_current_span().set_attribute("crm.tenant_id", caller.tenant_id)
    rate_limited(gateway.api_tenant_limit, caller.tenant_id, "for this tenant")
    if op is None:
        return
    if op.admin_only and not caller.has_role("admin"):
        raise Problem(403, detail="this operation needs the admin role", type=problem_type("forbidden"))
    needed = op.required_scope
    if caller.scopes is not None and needed is not None:
        write = needed.replace(":read", ":write")
        if needed not in caller.scopes and write not in caller.scopes:
            raise Problem(403, detail=f"this API client lacks the scope {needed}", type=problem_type("forbidden"))


def _finish(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Content-Type-Options"] = "nosniff"
    span = g.get("otel_span")
    if span is not None:
        span.set_attribute("http.response.status_code", response.status_code)
    caller: Caller | None = g.get("caller")
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    observe_request(request.method, route, response.status_code, seconds)
    log.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={
            "http_method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 1),
            "tenant_id": caller.tenant_id if caller else None,
            "request_id": g.get("request_id"),
        },
    )
    return response


def _teardown(exc: BaseException | None) -> None:
    span = g.pop("otel_span", None)
    token = g.pop("otel_token", None)
    if span is not None:
        if exc is not None:
            span.record_exception(exc)
        span.end()
    if token is not None:
        otel_context.detach(token)


def install(app: Flask) -> None:
    app.before_request(_start_request)
    app.before_request(_authenticate)
    app.after_request(_finish)
    app.teardown_request(_teardown)
