"""One service process: database, event bus, outbox relay, consumers, chores (periodic housekeeping) and
the gRPC server on one event loop, started and stopped in order; plus the command line every service shares
(serve, migrate, deadletters)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm_kit.audit_service import audit_servicer
from crm_kit.auth import JwksVerifier
from crm_kit.db import Database
from crm_kit.db.migrations import upgrade
from crm_kit.events.bus import EventBus
from crm_kit.events.consumer import EventConsumer
from crm_kit.events.envelope import Event
from crm_kit.events.relay import OutboxRelay
from crm_kit.events.stream import ensure_stream
from crm_kit.grpc.interceptors import TokenVerifier
from crm_kit.grpc.server import GrpcServer, Servicer
from crm_kit.logging import configure_logging
from crm_kit.privacy import ERASED_EVENTS, PersonalData
from crm_kit.settings import KitSettings, ServiceSettings, load, service_settings
from crm_kit.telemetry import configure_tracing, shutdown_tracing

log = logging.getLogger("crm_kit.runtime")

Handler = Callable[[AsyncSession, Event], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    """A durable consumer: its name, the subjects it filters on, and the handler applying each event."""

    name: str
    subjects: list[str]
    handler: Handler


@dataclass(frozen=True)
class Command:
    """A service-specific command line verb beside serve/migrate/deadletters (e.g. analytics' rebuild)."""

    name: str
    help: str
    run: Callable[[argparse.Namespace, ServiceSettings, KitSettings], Coroutine[Any, Any, None]]
    add_arguments: Callable[[argparse.ArgumentParser], None] = field(default=lambda parser: None)


@dataclass(frozen=True)
class Chore:
    """Housekeeping the service process runs by itself: `run(db)` once `first_delay` seconds after start,
    then every `interval` seconds, until the service stops (a run in progress then is cancelled after the
    shutdown's wait). Every replica runs it, so it must be idempotent and safe to run concurrently. A failing
    run is logged and the next one comes at its time: a chore never stops the service."""

    name: str
    interval: float  # seconds between the end of one run and the start of the next
    run: Callable[[Database], Awaitable[object]]
    first_delay: float = 60.0


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    default_grpc_port: int
    migrations: Path
    servicers: Callable[[ServiceRuntime], Sequence[Servicer]]
    subscriptions: Callable[[ServiceRuntime], Sequence[Subscription]] = field(default=lambda rt: ())
    commands: Sequence[Command] = ()
    # Serve crm.common.v1.AuditService over the service's audit_log (crm_kit.audit); a service whose
    # database has no audit log (analytics, a read model) sets this to False.
    audit: bool = True
    # What the service holds about a person (crm_kit.privacy): serves crm.common.v1.PersonalDataService and
    # runs the "<name>-privacy" consumer erasing a contact on crm.customer.contact.erased.
    personal_data: PersonalData | None = None
    # Periodic housekeeping of the service process (e.g. purging data past its retention).
    chores: Sequence[Chore] = ()


class ServiceRuntime:
    def __init__(
        self,
        spec: ServiceSpec,
        settings: ServiceSettings,
        kit: KitSettings,
        *,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.kit = kit
        self.verifier = verifier or JwksVerifier(kit.jwks_url, issuer=kit.jwt_issuer, audience=kit.jwt_audience)
        self.db = Database(settings.database_url)
        self.bus: EventBus | None = None
        self.relay: OutboxRelay | None = None
        self.consumers: list[EventConsumer] = []
        self.grpc: GrpcServer | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._on_stop: list[Callable[[], None]] = []

    def on_stop(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` when the service stops, after in-flight calls finished (a servicer's worker pool)."""
        self._on_stop.append(cleanup)

    @property
    def port(self) -> int:
        assert self.grpc is not None
        return self.grpc.port

    async def start(self) -> None:
        configure_tracing(self.spec.name)
        self.bus = await EventBus.connect(self.kit.nats_servers, name=self.spec.name)
        await ensure_stream(self.bus.js, self.kit.events_stream, update_existing=False)
        self.relay = OutboxRelay(self.db, self.bus)
        self._tasks.append(asyncio.create_task(self.relay.run(self._stop), name=f"{self.spec.name}-relay"))
        for sub in [*self.spec.subscriptions(self), *self._privacy_subscriptions()]:
            consumer = EventConsumer(
                self.db,
                self.bus,
                name=sub.name,
                subjects=sub.subjects,
                handler=sub.handler,
                stream=self.kit.events_stream,
            )
            self.consumers.append(consumer)
            self._tasks.append(asyncio.create_task(consumer.run(self._stop), name=sub.name))
        for chore in self.spec.chores:
            self._tasks.append(asyncio.create_task(self._run_chore(chore), name=f"{self.spec.name}-{chore.name}"))
        self.grpc = GrpcServer(
            service=self.spec.name,
            servicers=[
                *self.spec.servicers(self),
                *([audit_servicer(self.db)] if self.spec.audit else []),
                *([self.spec.personal_data.servicer(self.db)] if self.spec.personal_data is not None else []),
            ],
            verifier=self.verifier,
            host=self.settings.grpc_host,
            port=self.settings.grpc_port,
        )
        await self.grpc.start()
        if self.settings.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(self.settings.metrics_port)

    async def _run_chore(self, chore: Chore) -> None:
        delay = chore.first_delay
        while not await _stopped_within(self._stop, delay):
            started = time.monotonic()
            try:
                await chore.run(self.db)
            except Exception:
                log.exception("chore %s failed", chore.name)
            else:
                log.debug("chore %s took %.2f s", chore.name, time.monotonic() - started)
            delay = chore.interval

    def _privacy_subscriptions(self) -> list[Subscription]:
        personal_data = self.spec.personal_data
        if personal_data is None:
            return []
        if personal_data.audit_log != self.spec.audit:
            raise ValueError(f"{self.spec.name}: personal_data.audit_log must match ServiceSpec.audit")
        handler = personal_data.erasure_handler(self.bus, self.kit.events_stream)
        return [Subscription(name=f"{self.spec.name}-privacy", subjects=[ERASED_EVENTS], handler=handler)]

    async def stop(self) -> None:
        """Stop taking calls, finish in-flight ones, then stop relay and consumers and close connections."""
        if self.grpc is not None:
            await self.grpc.stop(self.settings.shutdown_grace_seconds)
        self._stop.set()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
            except Exception:
                log.exception("background task failed during shutdown")
        for cleanup in self._on_stop:
            try:
                cleanup()
            except Exception:
                log.exception("cleanup failed during shutdown")
        if self.bus is not None:
            await self.bus.close()
        await self.db.dispose()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await self.start()
        log.info("%s serving on port %s", self.spec.name, self.port)
        await stopping.wait()
        log.info("%s shutting down", self.spec.name)
        await self.stop()
        shutdown_tracing()


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `stop`; whether it was set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0))
    except TimeoutError:
        return False
    return True


def migrate(spec: ServiceSpec, settings: ServiceSettings, kit: KitSettings) -> None:
    upgrade(spec.migrations, settings.migration_database_url, app_role=kit.db_app_role)


def main(spec: ServiceSpec, argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"crm-{spec.name}", description=f"CRM {spec.name} service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the gRPC server, the outbox relay and the event consumers")
    commands.add_parser("migrate", help="apply database migrations")
    dead = commands.add_parser("deadletters", help="inspect or replay messages consumers gave up on")
    dead_cmd = dead.add_subparsers(dest="action", required=True)
    dead_list = dead_cmd.add_parser("list")
    dead_list.add_argument("--consumer", default=None)
    dead_replay = dead_cmd.add_parser("replay")
    dead_replay.add_argument("id")
    extra = {cmd.name: cmd for cmd in spec.commands}
    for cmd in spec.commands:
        cmd.add_arguments(commands.add_parser(cmd.name, help=cmd.help))
    args = parser.parse_args(argv)

    kit = load(KitSettings)
    settings = service_settings(spec.name, spec.default_grpc_port)
    configure_logging(spec.name, kit.log_level, kit.log_format)

    if args.command == "migrate":
        migrate(spec, settings, kit)
        print(f"{spec.name}: migrations applied")
    elif args.command == "serve":
        asyncio.run(ServiceRuntime(spec, settings, kit).serve_forever())
    elif args.command in extra:
        asyncio.run(extra[args.command].run(args, settings, kit))
    else:
        asyncio.run(_dead_letters(args, settings, kit))


async def _dead_letters(args: Any, settings: ServiceSettings, kit: KitSettings) -> None:
    from crm_kit.events.deadletters import list_dead_letters, replay

    db = Database(settings.database_url)
    try:
        if args.action == "list":
            for dl in await list_dead_letters(db, consumer=args.consumer):
                print(
                    json.dumps(
                        {
                            "id": dl.id,
                            "consumer": dl.consumer,
                            "subject": dl.subject,
                            "event_id": dl.event_id,
                            "deliveries": dl.deliveries,
                            "error": dl.error,
                            "created_at": dl.created_at.isoformat(),
                            "replayed_at": dl.replayed_at.isoformat() if dl.replayed_at else None,
                        },
                        ensure_ascii=False,
                    )
                )
        else:
            bus = await EventBus.connect(kit.nats_servers, name=f"crm-{args.id}-replay")
            try:
                await replay(db, bus, args.id)
            finally:
                await bus.close()
            print(f"replayed {args.id}")
    finally:
        await db.dispose()
