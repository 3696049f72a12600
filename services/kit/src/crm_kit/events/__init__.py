"""Domain events: CloudEvents on NATS JetStream, written through a transactional outbox and applied
exactly once by durable consumers with an inbox (see docs/architecture.md, Events)."""

from crm_kit.events.bus import EventBus
from crm_kit.events.consumer import EventConsumer, Handler
from crm_kit.events.deadletters import DeadLetterNotFound, list_dead_letters, replay
from crm_kit.events.envelope import (
    CONTENT_TYPE,
    Event,
    InvalidSubject,
    MalformedEvent,
    nats_subject,
    parse_type,
    subject_filter,
)
from crm_kit.events.outbox import record_event
from crm_kit.events.relay import MSG_ID_HEADER, OutboxRelay
from crm_kit.events.stream import DEFAULT_STREAM, ensure_stream, stream_config

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_STREAM",
    "MSG_ID_HEADER",
    "DeadLetterNotFound",
    "Event",
    "EventBus",
    "EventConsumer",
    "Handler",
    "InvalidSubject",
    "MalformedEvent",
    "OutboxRelay",
    "ensure_stream",
    "list_dead_letters",
    "nats_subject",
    "parse_type",
    "record_event",
    "replay",
    "stream_config",
    "subject_filter",
]
