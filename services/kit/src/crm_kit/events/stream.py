"""The JetStream stream every event is stored in (created or updated by `crmctl events ensure-stream`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import NotFoundError

from crm_kit.events.bus import EventBus

log = logging.getLogger(__name__)

DEFAULT_STREAM = "CRM_EVENTS"
DEFAULT_SUBJECTS = ("crm.events.>",)
DUPLICATE_WINDOW_SECONDS = 600  # longer than the relay's longest retry (max_backoff 30 s)
# 0 = no age limit: the stream is the history analytics rebuilds its read models from. Production sizes it
# with max_bytes instead (and erasure removes a person's events, see crm_kit.privacy).
MAX_AGE_DAYS = 0.0


def stream_config(
    name: str = DEFAULT_STREAM,
    replicas: int = 1,
    *,
    subjects: Sequence[str] = DEFAULT_SUBJECTS,
    duplicate_window_seconds: float = DUPLICATE_WINDOW_SECONDS,
    max_age_days: float = MAX_AGE_DAYS,
) -> StreamConfig:
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    return StreamConfig(
        name=name,
        description="CRM domain events (CloudEvents JSON), one subject per tenant/context/entity/action",
        subjects=list(subjects),
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=float(duplicate_window_seconds),
        max_age=max_age_days * 86400.0 if max_age_days else None,
    )


async def ensure_stream(
    target: JetStreamContext | EventBus | str | Sequence[str],
    name: str = DEFAULT_STREAM,
    replicas: int = 1,
    *,
    subjects: Sequence[str] = DEFAULT_SUBJECTS,
    duplicate_window_seconds: float = DUPLICATE_WINDOW_SECONDS,
    max_age_days: float = MAX_AGE_DAYS,
    connect_timeout: float = 30.0,
    update_existing: bool = True,
) -> StreamInfo:
    """Create the stream, or update it to this configuration. `target` is a JetStream context, an
    `EventBus`, or NATS server URL(s), in which case a connection is opened and closed here.

    Services call this at start with `update_existing=False`: they create a missing stream (local use) but
    never override what an operator set with `crmctl events ensure-stream --replicas 3`."""
    config = stream_config(
        name,
        replicas,
        subjects=subjects,
        duplicate_window_seconds=duplicate_window_seconds,
        max_age_days=max_age_days,
    )
    if isinstance(target, JetStreamContext):
        return await _apply(target, config, update_existing)
    if isinstance(target, EventBus):
        return await _apply(target.js, config, update_existing)
    servers = target if isinstance(target, str) else list(target)  # a string may be comma separated
    bus = await EventBus.connect(servers, name="crm-ensure-stream", timeout=connect_timeout)
    try:
        return await _apply(bus.js, config, update_existing)
    finally:
        await bus.close()


async def _apply(js: JetStreamContext, config: StreamConfig, update_existing: bool) -> StreamInfo:
    assert config.name
    try:
        existing = await js.stream_info(config.name)
    except NotFoundError:
        info = await js.add_stream(config)
        log.info("created stream %s on %s (replicas %s)", config.name, config.subjects, config.num_replicas)
        return info
    if not update_existing:
        return existing
    info = await js.update_stream(config)
    log.info("updated stream %s on %s (replicas %s)", config.name, config.subjects, config.num_replicas)
    return info
