"""`make dev`: the whole platform as local processes on embedded defaults.

Starts a real nats-server with JetStream (data in var/nats), migrates every database (SQLite files in
var/data), creates a demo tenant, then runs every process of deploy/Procfile with its output prefixed by
its name. Ctrl-C (or SIGTERM) stops the processes gracefully, then NATS.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VAR = ROOT / "var"
COLORS = ["36", "32", "35", "33", "34", "31", "96"]
DEMO_TENANT = os.environ.get("CRM_DEV_TENANT", "demo")
DEMO_EMAIL = os.environ.get("CRM_DEV_ADMIN_EMAIL", "admin@demo.example.com")
DEMO_PASSWORD = os.environ.get("CRM_DEV_ADMIN_PASSWORD", "demo-password-2026")


def procfile() -> list[tuple[str, list[str]]]:
    entries = []
    for line in (ROOT / "deploy" / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries.append((name.strip(), command.split()))
    return entries


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pump(name: str, color: str, stream: object) -> None:
    width = max(len(n) for n, _ in procfile()) if procfile() else 10
    prefix = f"\033[{color}m{name:<{width}} |\033[0m " if sys.stdout.isatty() else f"{name:<{width}} | "
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        sys.stdout.write(prefix + raw.decode(errors="replace"))
        sys.stdout.flush()


def spawn(name: str, argv: list[str], env: dict[str, str], color: str) -> subprocess.Popen[bytes]:
    exe = shutil.which(argv[0], path=str(BIN)) or argv[0]
    proc = subprocess.Popen(
        [exe, *argv[1:]], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    threading.Thread(target=pump, args=(name, color, proc.stdout), daemon=True).start()
    return proc


def wait_for_port(port: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def run(argv: list[str], env: dict[str, str]) -> None:
    exe = shutil.which(argv[0], path=str(BIN)) or argv[0]
    result = subprocess.run([exe, *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"`{' '.join(argv)}` failed")
    if result.stdout.strip():
        print(result.stdout.strip())


def main() -> int:
    (VAR / "data").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("CRM_LOG_FORMAT", "text")
    gateway_port = int(env.setdefault("GATEWAY_PORT", "8080"))
    if not port_free(gateway_port):
        raise SystemExit(f"port {gateway_port} is taken: set GATEWAY_PORT to another port")
    env.setdefault("CRM_JWKS_URL", f"http://127.0.0.1:{gateway_port}/.well-known/jwks.json")

    nats: subprocess.Popen[bytes] | None = None
    if "CRM_NATS_URL" not in env:
        nats_port = int(env.get("CRM_DEV_NATS_PORT", "4222"))
        if not port_free(nats_port):
            nats_port = free_port()
        nats = spawn(
            "nats",
            ["nats-server", "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(VAR / "nats")],
            env,
            COLORS[-1],
        )
        if not wait_for_port(nats_port):
            raise SystemExit("nats-server did not start")
        env["CRM_NATS_URL"] = f"nats://127.0.0.1:{nats_port}"

    run(["crmctl", "migrate"], env)
    run(["crmctl", "events", "ensure-stream"], env)
    listed = subprocess.run(
        [str(BIN / "crmctl"), "tenants", "list"], cwd=ROOT, env=env, capture_output=True, text=True
    ).stdout
    if DEMO_TENANT not in listed.split():
        run(
            ["crmctl", "tenants", "create", DEMO_TENANT, "--admin-email", DEMO_EMAIL,
             "--admin-password", DEMO_PASSWORD],
            env,
        )

    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    for i, (name, argv) in enumerate(procfile()):
        procs.append((name, spawn(name, argv, env, COLORS[i % (len(COLORS) - 1)])))

    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    if wait_for_port(gateway_port, timeout=30):
        print(
            f"\nCRM is running at http://127.0.0.1:{gateway_port}\n"
            f"  tenant:   {DEMO_TENANT}\n  email:    {DEMO_EMAIL}\n  password: {DEMO_PASSWORD}\n"
            f"  NATS:     {env['CRM_NATS_URL']}\nPress Ctrl-C to stop.\n",
            flush=True,
        )
    while not stopping.is_set():
        for name, proc in procs:
            if proc.poll() is not None:
                print(f"{name} exited with code {proc.returncode}; stopping everything", flush=True)
                stopping.set()
        stopping.wait(0.5)

    for _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in time; killing it", flush=True)
            proc.kill()
    if nats is not None:
        nats.send_signal(signal.SIGTERM)
        nats.wait(timeout=10)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
