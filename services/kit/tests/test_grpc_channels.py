"""Client channels ride out a service restart instead of failing the first calls after it."""

from __future__ import annotations

import json
import socket
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from crm_kit.grpc.channels import SERVICE_CONFIG, channel_options, open_channel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(port: int) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    server.start()
    return server


def check(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return int(reply.status)


def test_a_new_channel_does_not_inherit_a_broken_connection_to_the_same_address() -> None:
    # The platform tests start and stop whole platforms in one process; a service can come back on a port
    # an earlier one used. gRPC shares connections between channels to one address by default, so a new
    # channel would inherit the old channel's failed connection and its reconnect backoff, and its first
    # calls would fail with UNAVAILABLE although the new server is up.
    port = free_port()
    server = serve(port)
    old = open_channel(f"127.0.0.1:{port}")
    assert check(old) == health_pb2.HealthCheckResponse.SERVING
    server.stop(grace=None).wait()
    with pytest.raises(grpc.RpcError) as down:
        check(old)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    server = serve(port)
    try:
        with open_channel(f"127.0.0.1:{port}") as new:
            assert check(new) == health_pb2.HealthCheckResponse.SERVING
    finally:
        old.close()
        server.stop(grace=None).wait()


def test_only_unavailable_is_retried() -> None:
    # Retrying anything else could apply a write twice (a timeout may come after the work was done).
    config = json.loads(SERVICE_CONFIG)
    (method,) = config["methodConfig"]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert ("grpc.service_config", SERVICE_CONFIG) in channel_options()


def test_large_messages_raise_both_limits() -> None:
    small, large = dict(channel_options()), dict(channel_options(large_messages=True))
    assert "grpc.max_send_message_length" not in small
    assert large["grpc.max_send_message_length"] == large["grpc.max_receive_message_length"] == 64 * 1024 * 1024
