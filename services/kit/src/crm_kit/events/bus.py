"""One NATS connection per process, configured to ride out server restarts.

nats-py gives up reconnecting after about two minutes by default and leaves the pending limits implicit;
here reconnection never stops, the limits are explicit, and every connection event is logged. Components
that keep server-side state alive (pull subscriptions, the relay's backoff) register `on_reconnect`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

log = logging.getLogger(__name__)

RECONNECT_TIME_WAIT = 0.5  # seconds between reconnect attempts
PENDING_SIZE = 32 * 1024 * 1024  # bytes buffered while reconnecting before publish raises
JS_TIMEOUT = 5.0  # JetStream API and publish request timeout
PUBLISH_ASYNC_MAX_PENDING = 4096


class EventBus:
    """A NATS connection plus its JetStream context. Create with `await EventBus.connect(...)`."""

    def __init__(self, nc: NATS, name: str) -> None:
        self._nc = nc
        self.name = name
        self._js: JetStreamContext | None = None
        self._reconnect_listeners: list[Callable[[], None]] = []
        self._closing = False
        self._last_error = ""  # repeated errors while reconnecting are logged once

    @classmethod
    async def connect(
        cls,
        servers: list[str] | str,
        name: str,
        *,
        timeout: float | None = None,
        reconnect_time_wait: float = RECONNECT_TIME_WAIT,
        pending_size: int = PENDING_SIZE,
        ping_interval: int = 20,
    ) -> EventBus:
        """Connect to `servers` (a list or a comma-separated string). With `timeout=None` the first
        connection is retried until it succeeds, like every later reconnection; otherwise `TimeoutError`
        after `timeout` seconds."""
        if isinstance(servers, str):
            servers = [s.strip() for s in servers.split(",") if s.strip()]
        nc = NATS()
        bus = cls(nc, name)
        connecting = nc.connect(
            servers=servers,
            name=name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=reconnect_time_wait,  # type: ignore[arg-type]  # floats work
            connect_timeout=2,
            ping_interval=ping_interval,
            max_outstanding_pings=3,
            pending_size=pending_size,
            flush_timeout=10.0,
            drain_timeout=10,
            error_cb=bus._on_error,
            disconnected_cb=bus._on_disconnected,
            reconnected_cb=bus._on_reconnected,
            closed_cb=bus._on_closed,
        )
        try:
            await asyncio.wait_for(connecting, timeout)
        except BaseException:
            await nc.close()
            raise
        log.info("connected to NATS %s as %s", nc.connected_url.netloc if nc.connected_url else "?", name)
        return bus

    @property
    def nc(self) -> NATS:
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self._nc.jetstream(timeout=JS_TIMEOUT, publish_async_max_pending=PUBLISH_ASYNC_MAX_PENDING)
        return self._js

    @property
    def is_connected(self) -> bool:
        return bool(self._nc.is_connected)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call `callback` (synchronously, keep it short) after every reconnection."""
        if callback not in self._reconnect_listeners:
            self._reconnect_listeners.append(callback)

    def remove_on_reconnect(self, callback: Callable[[], None]) -> None:
        if callback in self._reconnect_listeners:
            self._reconnect_listeners.remove(callback)

    async def close(self) -> None:
        """Drain (finish in-flight messages and publishes), then close; just close if disconnected."""
        nc = self._nc
        if nc.is_closed:
            return
        self._closing = True
        try:
            if nc.is_connected:
                await nc.drain()
            else:
                await nc.close()
        except Exception as exc:  # a drain that fails still has to end in a closed connection
            log.warning("NATS drain failed (%s); closing", exc)
            await nc.close()

    async def _on_error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text == self._last_error:
            log.debug("NATS error on %s (again): %s", self.name, text)
            return
        self._last_error = text
        log.warning("NATS error on %s: %s", self.name, text)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        log.warning("NATS disconnected (%s); reconnecting", self.name)

    async def _on_reconnected(self) -> None:
        self._last_error = ""
        url = self._nc.connected_url
        log.info("NATS reconnected (%s) to %s", self.name, url.netloc if url else "?")
        for callback in list(self._reconnect_listeners):
            try:
                callback()
            except Exception:
                log.exception("reconnect listener failed")

    async def _on_closed(self) -> None:
        log.info("NATS connection closed (%s)", self.name)
