"""`crm-gateway migrate` and `crm-gateway serve` as real processes (gunicorn), including graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent / "crm-gateway"

pytestmark = pytest.mark.skipif(not BIN.exists(), reason="crm-gateway console script not installed")


def _env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DATABASE_URL=f"sqlite:///{tmp_path}/gateway.db",
        GATEWAY_PORT=str(port),
        GATEWAY_WORKERS="2",
        CRM_LOG_FORMAT="text",
    )
    return env


def test_serve_refuses_an_unmigrated_database(tmp_path: Path, unused_port: Callable[[], int]) -> None:
    result = subprocess.run(
        [str(BIN), "serve"], env=_env(tmp_path, unused_port()), capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "crm-gateway migrate" in result.stderr


def test_migrate_serve_and_graceful_sigterm(tmp_path: Path, unused_port: Callable[[], int]) -> None:
    port, metrics_port = unused_port(), unused_port()
    env = _env(tmp_path, port)
    env["GATEWAY_METRICS_PORT"] = str(metrics_port)
    migrated = subprocess.run([str(BIN), "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert migrated.returncode == 0, migrated.stderr
    process = subprocess.Popen([str(BIN), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, "gateway did not come up"
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        jwks = httpx.get(f"http://127.0.0.1:{port}/.well-known/jwks.json", timeout=5).json()
        assert len(jwks["keys"]) == 1, "the master created exactly one first key for all workers"
        unauthenticated = httpx.get(f"http://127.0.0.1:{port}/api/v1/contacts", timeout=5)
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers["content-type"] == "application/problem+json"
        for _ in range(4):  # spread over both workers
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        healthz = [
            line
            for line in metrics.splitlines()
            if line.startswith("crm_gateway_http_requests_total") and 'route="/healthz"' in line
        ]
        assert healthz and sum(float(line.rsplit(" ", 1)[1]) for line in healthz) >= 5
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
