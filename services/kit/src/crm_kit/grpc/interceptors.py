"""Server interceptors: tracing, error mapping, and authentication with tenant context.

Each wraps the RPC's behaviour rather than replacing the handler, so a rejection is raised from inside a
handler of the same RPC type (what grpc.aio requires) and context variables set here are visible to the
servicer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from crm_kit.auth import bearer_token
from crm_kit.context import Principal, tenant_scope
from crm_kit.errors import CrmError, InvalidArgument, Unauthenticated
from crm_kit.telemetry import extract_context

log = logging.getLogger("crm_kit.grpc")

# Infrastructure RPCs that must work without a token: probes and tooling.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Principal: ...


def _wrap(handler: grpc.RpcMethodHandler | None, wrap: Callable[[Behavior], Behavior]) -> Any:
    """Wrap unary-unary and unary-stream behaviours. Client-streaming RPCs are refused outright, so no RPC
    kind can ever bypass authentication by not being wrapped."""
    if handler is None:
        return None
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary),  # type: ignore[arg-type]
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(handler.unary_stream, wrap),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    raise RuntimeError("client-streaming RPCs are not supported by the CRM kit")


def _wrap_stream(behavior: Any, wrap: Callable[[Behavior], Behavior]) -> Any:
    """A server-streaming behaviour is an async generator; run it through the same wrapper by collecting
    nothing: the wrapper sees a unary call that writes every response with context.write."""

    async def as_unary(request: Any, context: grpc.aio.ServicerContext) -> None:
        async for response in behavior(request, context):
            await context.write(response)

    wrapped = wrap(as_unary)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> None:
        await wrapped(request, context)

    return streaming


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class TracingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str) -> None:
        self.tracer = trace.get_tracer(f"crm.{service}.grpc")

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        handler = await continuation(details)
        if method.startswith(PUBLIC_PREFIXES):
            return handler

        def wrap(behavior: Behavior) -> Behavior:
            async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = otel_context.attach(extract_context(_metadata(context)))  # type: ignore[arg-type]
                try:
                    with self.tracer.start_as_current_span(
                        method, kind=SpanKind.SERVER, attributes={"rpc.system": "grpc", "rpc.method": method}
                    ) as span:
                        try:
                            return await behavior(request, context)
                        finally:
                            code = context.code()
                            if code not in (None, grpc.StatusCode.OK, 0):
                                span.set_status(Status(StatusCode.ERROR, str(code)))
                finally:
                    otel_context.detach(token)

            return traced

        return _wrap(handler, wrap)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors to canonical codes with google.rpc details; hides everything else."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)

        def wrap(behavior: Behavior) -> Behavior:
            async def mapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await behavior(request, context)
                except CrmError as exc:
                    await context.abort_with_status(rpc_status.to_status(exc.to_status()))  # type: ignore[attr-defined]
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    log.exception("unhandled error in %s", details.method)
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error")

            return mapped

        return _wrap(handler, wrap)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Verifies the bearer token itself (no header is trusted because a gateway forwarded it) and runs the
    RPC inside the token's tenant scope."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if details.method.startswith(PUBLIC_PREFIXES):
            return handler

        def wrap(behavior: Behavior) -> Behavior:
            async def authenticated(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    principal = await self.verifier.verify(bearer_token(_metadata(context).get("authorization")))
                except Unauthenticated as exc:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
                    raise  # unreachable: abort raises
                with tenant_scope(principal.tenant_id, principal):
                    return await behavior(request, context)

            return authenticated

        return _wrap(handler, wrap)


def invalid_argument(field: str, description: str) -> InvalidArgument:
    return InvalidArgument.field(field, description)
