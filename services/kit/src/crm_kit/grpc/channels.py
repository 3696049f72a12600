"""Client channel settings: the one way the gateway, the CLI and the services open channels to a service.

Why a retry policy: a service that restarts (a rollout, a crashed pod, a test that starts one) makes the
first calls on an existing channel fail fast with UNAVAILABLE while the channel reconnects. UNAVAILABLE means
the call was not processed (the services never answer it after doing work), so retrying it is safe, even for
a create. The reconnect backoff is capped low for the same reason: gRPC's default cap is 120 s, which would
keep a gateway failing long after the service is back.

Why a local subchannel pool: by default gRPC shares connections between channels to the same address in one
process, so a new channel could inherit a broken connection (and its backoff) from an old one to a server that
went away on that port.
"""

from __future__ import annotations

import json

import grpc
import grpc.aio

from crm_kit.grpc.server import MAX_MESSAGE_BYTES

SERVICE_CONFIG = json.dumps(
    {
        # Spreads calls over every address the name resolves to (a headless Service gives one per pod).
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{}],  # every service and method
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)

ChannelOptions = list[tuple[str, int | str]]


def channel_options(*, large_messages: bool = False) -> ChannelOptions:
    """Options for a long-lived client channel. `large_messages`: imports and exports travel as one message."""
    options: ChannelOptions = [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", SERVICE_CONFIG),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if large_messages:
        options += [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    return options


def open_channel(target: str, *, large_messages: bool = False) -> grpc.Channel:
    return grpc.insecure_channel(target, options=channel_options(large_messages=large_messages))


def open_aio_channel(target: str, *, large_messages: bool = False) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=channel_options(large_messages=large_messages))
