"""``creditq dev``: migrate, then the simulator, the API and one worker in one terminal, with a ready account.

For trying creditq out on one machine (Postgres and Redis on localhost). Each child's output is prefixed with its
name; Ctrl-C stops them all. Callbacks are on (CREDITQ_PUBLIC_URL points at the API) unless already set.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

import httpx

from shared.config import Settings


def _pump(name: str, stream: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"{name:>6} | {raw.decode(errors='replace')}")
        sys.stdout.flush()


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


async def _demo_account(settings: Settings) -> tuple[str, str]:
    from shared import db
    from shared.ledger import accounts

    pool = await db.create_pool(settings, max_size=2)
    try:
        account, _, key = await accounts.create_account(pool, "pro", 500)
    finally:
        await pool.close()
    return account.id, key


def run(settings: Settings, port: int, sim_port: int) -> int:
    """Run the dev stack until Ctrl-C. Returns 0 on a clean stop; raises Unavailable if Postgres is down."""
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

    try:
        sim = start("sim", "sim", "--port", str(sim_port), "--time-scale", "0.5")
        _wait_http(sim_url + "/__sim/stats", sim, "sim")
        api = start("api", "api", "--port", str(port))
        _wait_http(api_url + "/healthz", api, "api")
        start("worker", "worker")
        account_id, key = asyncio.run(_demo_account(settings))
        print(
            f"""
creditq dev is running: API {api_url} · simulator {sim_url} · admin token {env["CREDITQ_ADMIN_TOKEN"]}
A pro account {account_id} with 500 credits is ready. Submit a first job:

  export CREDITQ_API_KEY={key}
  creditq submit --model google/nano-banana --prompt "a lighthouse at dawn" --wait

or with curl:

  curl -s -X POST {api_url}/v1/jobs -H "Authorization: Bearer $CREDITQ_API_KEY" \\
       -H 'Content-Type: application/json' -d '{{"model": "google/nano-banana", "input": {{"prompt": "a cat"}}}}'

Ctrl-C stops everything.
""",
            flush=True,
        )
        while all(p.poll() is None for _, p in children):
            time.sleep(0.5)
        dead = [f"{n} (status {p.returncode})" for n, p in children if p.poll() is not None]
        print(f"creditq dev: stopped because {', '.join(dead)} exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for _, p in reversed(children):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in children:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
