"""Calling the services: pick the tenant's cell, reuse its channel, forward the caller's token and trace.

Methods are invoked generically from their descriptors (no generated stubs needed), with a deadline on
every call. The services verify the forwarded token themselves; the gateway adds no identity of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from opentelemetry import propagate

from crm_gateway.metrics import observe_upstream
from crm_gateway.routing.cells import ChannelPool, TenantDirectory

MessageClass = type[Message]


def method_path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


class Upstream:
    def __init__(self, pool: ChannelPool, directory: TenantDirectory, *, deadline_seconds: float) -> None:
        self.pool = pool
        self.directory = directory
        self.deadline_seconds = deadline_seconds
        self._callables: dict[tuple[str, str, str], Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def _callable(self, cell: str, service_key: str, method: MethodDescriptor) -> Callable[..., Any]:
        path = method_path(method)
        key = (cell, service_key, path)
        found = self._callables.get(key)
        if found is not None:
            return found
        channel = self.pool.channel(cell, service_key)
        response_cls = GetMessageClass(method.output_type)
        multicallable = channel.unary_unary(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        with self._lock:
            self._callables.setdefault(key, multicallable)
        return self._callables[key]

    def call(
        self,
        *,
        tenant_id: str,
        service_key: str,
        method: MethodDescriptor,
        request: Message,
        bearer_token: str,
        request_id: str = "",
        deadline_seconds: float | None = None,
    ) -> Message:
        """Invoke `method` in the tenant's cell; raises grpc.RpcError as the service answered."""
        cell = self.directory.cell_of(tenant_id)
        metadata: dict[str, str] = {}
        propagate.inject(metadata)
        metadata["authorization"] = f"Bearer {bearer_token}"
        if request_id:
            metadata["x-request-id"] = request_id
        call = self._callable(cell, service_key, method)
        try:
            timeout = self.deadline_seconds if deadline_seconds is None else deadline_seconds
            response: Message = call(request, timeout=timeout, metadata=list(metadata.items()))
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            observe_upstream(service_key, method.name, code.name if code is not None else "UNKNOWN")
            raise
        observe_upstream(service_key, method.name, "OK")
        return response


def request_class(method: MethodDescriptor) -> MessageClass:
    return GetMessageClass(method.input_type)
