"""Builds a grpc.aio server with the kit's interceptors, health and reflection, and stops it gracefully."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from crm_kit.grpc.interceptors import AuthInterceptor, ErrorInterceptor, TokenVerifier, TracingInterceptor

log = logging.getLogger("crm_kit.grpc")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Servicer:
    """A servicer plus the generated function that registers it and its full service name."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    implementation: Any
    full_name: str


class GrpcServer:
    def __init__(
        self, *, service: str, servicers: Sequence[Servicer], verifier: TokenVerifier, host: str, port: int
    ) -> None:
        self.service = service
        self.server = grpc.aio.server(
            interceptors=[TracingInterceptor(service), ErrorInterceptor(), AuthInterceptor(verifier)],
            options=[
                # Imports arrive as one message (the gateway's upload limit is 50 MiB by default); the gateway's
                # channels accept replies (exports) of the same size: crm_gateway.routing.cells.
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                # Clients reconnect (and re-resolve) every few minutes, so new pods get traffic after a
                # scale-up; in-flight calls get a grace period.
                ("grpc.max_connection_age_ms", 300_000),
                ("grpc.max_connection_age_grace_ms", 30_000),
            ],
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [s.full_name for s in servicers]
        for s in servicers:
            s.add_to_server(s.implementation, self.server)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.names = names
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise SystemExit(f"cannot bind gRPC to {host}:{port}")

    async def start(self) -> None:
        await self.server.start()
        for name in ["", *self.names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC listening", extra={"port": self.port, "services": self.names})

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING first, so load balancers drain us, then let in-flight calls finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
