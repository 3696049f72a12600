"""Prometheus metrics of the gateway, served on GATEWAY_METRICS_PORT (0 = off).

gunicorn runs several worker processes, so metrics use prometheus_client's multiprocess mode: the master
points PROMETHEUS_MULTIPROC_DIR at a fresh directory *before* anything imports prometheus_client, workers
write their samples there, and the master serves the aggregate. Without the variable (tests, a single
process) the ordinary in-process registry is used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir() -> Path:
    """Master, before forking: an empty directory for the workers' sample files."""
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        path = Path(configured)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="crm-gateway-metrics-"))
        os.environ[MULTIPROC_ENV] = str(path)
    return path


def start_server(port: int, host: str = "0.0.0.0") -> None:
    """Master: serve the aggregate of every worker's samples."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)


def worker_exited(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class _Metrics:
    """Created on first use, so importing this module never fixes prometheus_client's mode too early."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.requests = Counter(
            "crm_gateway_http_requests_total", "HTTP requests handled", ["method", "route", "status"]
        )
        self.latency = Histogram(
            "crm_gateway_http_request_duration_seconds",
            "HTTP request duration",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.upstream = Counter(
            "crm_gateway_upstream_calls_total", "gRPC calls to the services", ["service", "method", "code"]
        )


_metrics: _Metrics | None = None


def metrics() -> _Metrics:
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    m = metrics()
    m.requests.labels(method, route, str(status)).inc()
    m.latency.labels(method, route).observe(seconds)


def observe_upstream(service: str, method: str, code: str) -> None:
    metrics().upstream.labels(service, method, code).inc()
