"""`crm-gateway serve`: gunicorn, started programmatically.

The master prepares the database (first signing key) before forking; each worker then builds its own app,
engine and gRPC channels after the fork (gRPC channels must not cross a fork). SIGTERM is gunicorn's
graceful shutdown: workers finish in-flight requests within GATEWAY_GRACEFUL_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from crm_gateway import migrations
from crm_gateway.auth.keys import ensure_key
from crm_gateway.config import Settings
from crm_gateway.db import Database

log = logging.getLogger("crm_gateway.server")


class NotMigrated(RuntimeError):
    pass


def prepare(settings: Settings) -> None:
    """Checks and one-time setup done once in the master, before workers start."""
    db = Database(settings.gateway.database_url)
    try:
        revision = migrations.current_revision(db.engine)
        if revision is None:
            raise NotMigrated("the gateway database has no schema yet: run `crm-gateway migrate` (or `crmctl migrate`)")
        head = migrations.head_revision()
        if revision != head:
            log.warning("gateway database revision differs from code", extra={"db": revision, "code": head})
        if settings.gateway.signing_key_file is None:
            ensure_key(db)
    finally:
        db.dispose()


def _on_starting(server: Any) -> None:
    """Send gunicorn's own log lines through the root logger (structured JSON, like everything else)."""
    for name in ("gunicorn.error", "gunicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def _child_exit(server: Any, worker: Any) -> None:
    from crm_gateway.metrics import worker_exited

    worker_exited(worker.pid)


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    gateway = getattr(app, "extensions", {}).get("crm_gateway") if app is not None else None
    if gateway is not None:
        gateway.close()


class GatewayServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        gw = self.settings.gateway
        options: dict[str, Any] = {
            "bind": f"{gw.host}:{gw.port}",
            "workers": gw.workers,
            "threads": gw.threads,
            "worker_class": "gthread",
            "graceful_timeout": gw.graceful_timeout_seconds,
            "timeout": max(30, int(gw.grpc_deadline_seconds) + 20),
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": self.settings.kit.log_level.lower(),
            "preload_app": False,
            "proc_name": "crm-gateway",
            "worker_exit": _worker_exit,
            "child_exit": _child_exit,
            "on_starting": _on_starting,
            "forwarded_allow_ips": "*" if gw.trusted_proxies else "127.0.0.1",
        }
        if gw.metrics_port:
            options["when_ready"] = _start_metrics(gw.metrics_port, gw.host)
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        # Runs in each worker after the fork.
        from crm_gateway.app import create_app
        from crm_kit.telemetry import configure_tracing

        configure_tracing("gateway")
        return create_app(self.settings)


def _start_metrics(port: int, host: str) -> Callable[[Any], None]:
    def when_ready(server: Any) -> None:
        from crm_gateway.metrics import start_server

        start_server(port, host)
        log.info("serving metrics", extra={"port": port})

    return when_ready


def serve(settings: Settings) -> None:
    prepare(settings)
    if settings.gateway.metrics_port:
        from crm_gateway.metrics import prepare_multiprocess_dir

        prepare_multiprocess_dir()  # before any worker imports prometheus_client
    log.info(
        "starting gateway",
        extra={"bind": f"{settings.gateway.host}:{settings.gateway.port}", "workers": settings.gateway.workers},
    )
    GatewayServer(settings).run()
