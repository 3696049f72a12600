"""Client channels ride out a service restart instead of failing the first calls after it."""

from __future__ import annotations

import json
import socket
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from crm_kit.grpc.channels import SERVICE_CONFIG, channel_options, open_channel
from crm_kit.grpc.server import MAX_MESSAGE_BYTES


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


def test_large_messages_carry_a_file_and_small_channels_refuse_it() -> None:
    # An import upload and an export download travel as one message; gRPC's default limit is 4 MiB.
    port = free_port()
    echo = grpc.method_handlers_generic_handler(
        "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}
    )
    limits = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[echo], options=limits)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    payload = b"x" * (8 * 1024 * 1024)
    try:
        with open_channel(f"127.0.0.1:{port}", large_messages=True) as large:
            assert large.unary_unary("/test.Echo/Echo")(payload, timeout=30) == payload
        with open_channel(f"127.0.0.1:{port}") as small, pytest.raises(grpc.RpcError) as refused:
            small.unary_unary("/test.Echo/Echo")(payload, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop(grace=None).wait()
