"""``creditq dev`` as a new user runs it: on other ports, the banner's lines copied into a shell as they are,
SIGTERM stopping every child, busy ports refused before anything starts, the demo account reused."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.apiserver import free_port
from tests.conftest import CREDITQ

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _env(base_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CREDITQ_API_URL", "CREDITQ_API_KEY")}
    env.update(base_env)
    env.pop("KIE_BASE_URL", None)
    env["CREDITQ_LOG_FORMAT"] = "json"
    return env


def _start(env: dict[str, str], port: int, sim_port: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CREDITQ, "dev", "--port", str(port), "--sim-port", str(sim_port)],
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the test sends signals to dev alone, as `kill <pid>` does
    )


def _banner(proc: subprocess.Popen[bytes], log: Path, timeout: float = 40) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Ctrl-C (or SIGTERM) stops everything." in text:
            return text
        assert proc.poll() is None, text[-3000:]
        time.sleep(0.2)
    raise AssertionError(log.read_text(errors="replace")[-3000:])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


async def test_dev_on_other_ports_banner_lines_work_and_sigterm_stops_all(
    base_env: dict[str, str], tmp_path: Path, pool: asyncpg.Pool
) -> None:
    port, sim_port = free_port(), free_port()
    env = _env(base_env)
    proc = _start(env, port, sim_port, tmp_path / "dev.log")
    try:
        text = _banner(proc, tmp_path / "dev.log")
        exports = re.findall(r"^export CREDITQ_API_(?:URL|KEY)=\S+$", text, re.M)
        submit = re.findall(r"^\S*creditq submit .*--wait$", text, re.M)
        assert len(exports) == 2 and len(submit) == 1, text
        assert f"export CREDITQ_API_URL=http://127.0.0.1:{port}" in exports
        # The lines exactly as printed, pasted into a shell in the repository (where `make dev` runs).
        script = "\n".join([*exports, submit[0]])
        clean = {k: v for k, v in env.items() if not k.startswith("CREDITQ_API_")}
        r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "succeeded: charged 4 credits" in r.stdout
        first_account = re.search(r"The demo account (\S+)", text)
        assert first_account is not None

        kids = _children(proc.pid)
        assert len(kids) == 3  # sim, api, worker
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for kid in kids:
            deadline = time.monotonic() + 5
            while _alive(kid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _alive(kid), f"child {kid} outlived creditq dev"
        assert not _listening(port) and not _listening(sim_port)

        # A second start reuses the demo account (a new key for it), on the same ports, now free again.
        proc = _start(env, port, sim_port, tmp_path / "dev2.log")
        text2 = _banner(proc, tmp_path / "dev2.log")
        second = re.search(r"The demo account (\S+)", text2)
        assert second is not None and second.group(1) == first_account.group(1)
        n = await pool.fetchval("SELECT count(*) FROM accounts WHERE external_id = 'demo'")
        assert n == 1

        # A third on the busy ports: one line, exit 2, nothing started.
        r = subprocess.run(
            [CREDITQ, "dev", "--port", str(port), "--sim-port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 2
        assert r.stderr.strip() == (
            f"creditq: error: port {port} is busy (another creditq dev?): stop it or choose another with --port"
        )
        assert "migrations" not in r.stdout and "running" not in r.stdout
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200  # the first one is unhurt
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
