"""``creditq dev``: migrate, then the simulator, the API and the workers in one terminal, with a ready account.

For trying creditq out on one machine (Postgres and Redis on localhost). Each child's output is prefixed with its
name. Ctrl-C or SIGTERM stops them all: the signal is forwarded (SIGTERM) to every child and ``dev`` waits for
each to exit (killing one that takes longer than :data:`STOP_SECONDS`), so no process is left on its port. Busy
ports are refused with one line before anything starts. The demo account (externalId :data:`DEMO_EXTERNAL_ID`)
is made once and reused by every later start, each of which prints a fresh key for it. Callbacks are on
(CREDITQ_PUBLIC_URL points at the API) unless already set.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

from shared.config import Settings
from shared.errors import ConfigError, Conflict, NotFound

DEMO_EXTERNAL_ID = "demo"
DEMO_TIER = "pro"
DEMO_CREDITS = 500
STOP_SECONDS = 15.0


class _Stop(Exception):
    """SIGTERM arrived: stop the children and exit 0."""


def _pump(name: str, stream: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"{name:>8} | {raw.decode(errors='replace')}")
        sys.stdout.flush()


def port_busy(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on (or holds) ``host:port``."""
    with socket.socket() as s:
        # As uvicorn binds: a port whose last connections linger in TIME_WAIT is free, a listening one is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _wait_http(url: str, proc: subprocess.Popen[bytes], name: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"creditq dev: {name} exited with status {proc.returncode}; see its lines above")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"creditq dev: {name} did not start within {timeout:.0f}s")


async def demo_account(settings: Settings) -> tuple[str, int, str]:
    """The demo account (made on first use with :data:`DEMO_CREDITS`) and a new API key for it:
    (account id, available credits, key). Idempotent but for the new key; safe against a concurrent start."""
    from shared import db
    from shared.ledger import accounts

    pool = await db.create_pool(settings, max_size=2)
    try:
        try:
            account = await accounts.get_account(pool, DEMO_EXTERNAL_ID)
        except NotFound:
            try:
                account, _, key = await accounts.create_account(pool, DEMO_TIER, DEMO_CREDITS, DEMO_EXTERNAL_ID)
                return account.id, account.balance - account.held, key
            except Conflict:  # another `creditq dev` made it meanwhile
                account = await accounts.get_account(pool, DEMO_EXTERNAL_ID)
        _, key = await accounts.create_key(pool, account.id)
        return account.id, account.balance - account.held, key
    finally:
        await pool.close()


def _creditq_command() -> str:
    """How the user should call creditq from the working directory: ``creditq`` when that is on PATH, else the
    script's path (``.venv/bin/creditq`` from the repository)."""
    script = Path(sys.executable).with_name("creditq")
    found = shutil.which("creditq")
    if found and Path(found).resolve() == script.resolve():
        return "creditq"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def banner(
    api_url: str, sim_url: str, admin_token: str, account_id: str, available: int, key: str, workers: int
) -> str:
    """The lines ``creditq dev`` prints once everything is up: the exports and the first submit to copy."""
    cq = _creditq_command()
    no_worker = (
        "\nNo worker runs (--workers 0): jobs stay queued, so you can try `"
        + cq
        + " jobs cancel <taskId>`.\nStart one with `"
        + cq
        + " worker` (same DATABASE_URL/REDIS_URL/KIE_BASE_URL) to let them run.\n"
        if workers == 0
        else ""
    )
    return f"""
creditq dev is running: API {api_url} · simulator {sim_url} · operator page {api_url}/admin?token={admin_token}
The demo account {account_id} (externalId {DEMO_EXTERNAL_ID}) has {available} credits available.
In another terminal, copy these lines:

export CREDITQ_API_URL={api_url}
export CREDITQ_API_KEY={key}
{cq} submit --model google/nano-banana --prompt "a lighthouse at dawn" --wait
{no_worker}
or with curl:

  curl -s -X POST $CREDITQ_API_URL/v1/jobs -H "Authorization: Bearer $CREDITQ_API_KEY" \\
       -H 'Content-Type: application/json' -d '{{"model": "google/nano-banana", "input": {{"prompt": "a cat"}}}}'

Ctrl-C (or SIGTERM) stops everything.
"""


def run(settings: Settings, port: int, sim_port: int, workers: int = 1, sim_credits: float = 1_000_000) -> int:
    """Run the dev stack until Ctrl-C or SIGTERM. Returns 0 on a clean stop, 1 when a child died. Raises
    ConfigError (busy port, before anything starts), Unavailable (Postgres down)."""
    if port == sim_port:
        raise ConfigError(f"--port and --sim-port must differ (both {port})")
    for flag, p in (("--port", port), ("--sim-port", sim_port)):
        if port_busy(p):
            raise ConfigError(f"port {p} is busy (another creditq dev?): stop it or choose another with {flag}")
    if workers < 0:
        raise ConfigError("--workers must be 0 or more")
    from shared.migrate import migrate

    applied = asyncio.run(migrate(settings))
    print(f"creditq dev: migrations {'applied: ' + ', '.join(applied) if applied else 'up to date'}")
    api_url = f"http://127.0.0.1:{port}"
    sim_url = f"http://127.0.0.1:{sim_port}"
    env = {
        **os.environ,
        "KIE_BASE_URL": sim_url,
        "KIE_API_KEY": settings.kie_api_key or "dev-key",
        "CREDITQ_PUBLIC_URL": settings.public_url or api_url,
        "CREDITQ_ADMIN_TOKEN": settings.admin_token or "dev-admin",
        "CREDITQ_LOG_FORMAT": os.environ.get("CREDITQ_LOG_FORMAT", "console"),
    }
    me = [sys.executable, "-m", "creditq"]
    children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*me, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True).start()
        children.append((name, proc))
        return proc

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        sim = start("sim", "sim", "--port", str(sim_port), "--time-scale", "0.5", "--credits", str(sim_credits))
        _wait_http(sim_url + "/__sim/stats", sim, "sim")
        api = start("api", "api", "--port", str(port))
        _wait_http(api_url + "/healthz", api, "api")
        for i in range(workers):
            start("worker" if workers == 1 else f"worker{i + 1}", "worker")
        account_id, available, key = asyncio.run(demo_account(settings))
        print(banner(api_url, sim_url, env["CREDITQ_ADMIN_TOKEN"], account_id, available, key, workers), flush=True)
        while all(p.poll() is None for _, p in children):
            time.sleep(0.5)
        dead = [f"{n} (status {p.returncode})" for n, p in children if p.poll() is not None]
        print(f"creditq dev: stopped because {', '.join(dead)} exited", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        # A second signal while stopping must not leave children behind: ignore it until they are gone.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop(children)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _stop(children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """SIGTERM every live child (the worker first finishes its steps), then wait; kill what outlives the wait."""
    for _, p in reversed(children):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for name, p in children:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"creditq dev: {name} did not stop within {STOP_SECONDS:.0f}s; killing it", file=sys.stderr)
            p.kill()
            p.wait()
    if children:
        print("creditq dev: stopped " + ", ".join(n for n, _ in children), file=sys.stderr, flush=True)
