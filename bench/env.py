"""The benchmark's world: its own database, Redis database and queue prefix, a price list with an unlimited
``bench`` tier, the ``creditq`` processes it starts (every one stopped at the end), and readings from /proc.

Nothing here is shared with the test suite or a developer's database: the database ``creditq_bench`` is dropped and
re-created at the start of every run, Redis database 14 is flushed, and the queue names carry the run id.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
CREDITQ = str(Path(sys.executable).with_name("creditq"))
PG_ADMIN = os.environ.get("CREDITQ_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("CREDITQ_BENCH_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("CREDITQ_BENCH_REDIS_DB", "14"))
DB_NAME = os.environ.get("CREDITQ_BENCH_DB", "creditq_bench")
BENCH_TIER = "bench"
KIE_KEY = "bench-key"
ADMIN_TOKEN = "bench-admin"  # noqa: S105 - a local benchmark's throwaway admin token
HUGE_CREDITS = 10**15
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    """Progress on stderr (stdout is for the table)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def account_id(n: int) -> str:
    """The id of bench account ``n`` (1-based). pgbench builds the same string: ``'acct_' || lpad(to_hex(n), 32,
    '0')``, so the baseline's random account is the API's random account."""
    return f"acct_{n:032x}"


# --- Processes ---------------------------------------------------------------------------------------------------


@dataclass
class Proc:
    """A subprocess the bench started, in its own session (so its children can be found and stopped with it)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL of its own process group if it does not exit in ``timeout`` seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        # uvicorn --workers children normally leave with their parent; make sure none is left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


class StartError(RuntimeError):
    pass


@dataclass
class Bench:
    """One benchmark run's environment. Use as a context manager: every process is stopped on exit."""

    quick: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="creditq-bench-")))
    procs: list[Proc] = field(default_factory=list)
    keep_tmp: bool = False

    @property
    def database_url(self) -> str:
        return PG_ADMIN.rsplit("/", 1)[0] + "/" + DB_NAME

    @property
    def redis_url(self) -> str:
        return f"{REDIS_BASE}/{REDIS_DB}"

    def queue(self, part: str) -> str:
        """A queue name (and Redis key prefix) of this run."""
        return f"cqbench:{self.run_id}:{part}"

    @property
    def pricing_path(self) -> Path:
        return self.tmp / "pricing.toml"

    def env(self, queue: str, **extra: str) -> dict[str, str]:
        """The environment of a creditq process of this run."""
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "CREDITQ_QUEUE": queue,
            "CREDITQ_PRICING": str(self.pricing_path),
            "CREDITQ_ADMIN_TOKEN": ADMIN_TOKEN,
            "CREDITQ_LOG_FORMAT": "json",
            "CREDITQ_LOG_LEVEL": "info",  # the default, as deployed: log lines are part of the cost
            "KIE_API_KEY": KIE_KEY,
            "KIE_BASE_URL": "http://127.0.0.1:9",
            "CREDITQ_PUBLIC_URL": "",
            "CREDITQ_ALLOW_PRIVATE_CALLBACKS": "true",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(extra)
        return env

    def __enter__(self) -> Bench:
        atexit.register(self.close)
        # A SIGTERM (`kill`, `timeout`) ends the run as Ctrl-C does: through __exit__, which stops every process it
        # started (they run in sessions of their own, so they would outlive the bench otherwise).
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- setup --

    def setup(self) -> None:
        """Fresh database (dropped, created, migrated with ``creditq migrate``), flushed Redis db, price list."""
        self.write_pricing()
        asyncio.run(self._reset_database())
        out = subprocess.run(
            [CREDITQ, "migrate"], env=self.env(self.queue("migrate")), capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            raise StartError(f"creditq migrate failed: {out.stderr.strip() or out.stdout.strip()}")
        asyncio.run(self.flush_redis())

    def write_pricing(self) -> None:
        """The bundled price list plus a ``bench`` tier without limits: no daily or concurrent cap, no cooldowns,
        so that the benchmark measures the submit path, not a refusal."""
        bundled = (ROOT / "shared" / "pricing.toml").read_text()
        text = (
            bundled + f"\n\n# Added by bench/env.py: no limits, so that tier limits never refuse a benchmark submit.\n"
            f"[tiers.{BENCH_TIER}]\nmonthly_credits = 0\ndaily_jobs = 0\nconcurrent_jobs = 0\ncooldown_seconds = {{}}\n"
        )
        tomllib.loads(text)  # fail here, not in a child process
        self.pricing_path.write_text(text)

    async def _reset_database(self) -> None:
        conn = await asyncpg.connect(PG_ADMIN, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        finally:
            await conn.close()

    async def flush_redis(self) -> None:
        r = aioredis.Redis.from_url(self.redis_url)
        try:
            await r.flushdb()
        finally:
            await r.aclose()

    async def drop_database(self) -> None:
        conn = await asyncpg.connect(PG_ADMIN, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        finally:
            await conn.close()

    # -- processes --

    def start(self, name: str, args: list[str], env: dict[str, str], url: str = "") -> Proc:
        logf = self.tmp / f"{name}-{len(self.procs)}.log"
        fh = logf.open("wb")
        popen = subprocess.Popen(
            args, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=self.tmp, start_new_session=True
        )
        fh.close()
        proc = Proc(name, popen, logf, url)
        self.procs.append(proc)
        return proc

    def wait_http(self, proc: Proc, path: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise StartError(f"{proc.name} exited {proc.popen.returncode}:\n{proc.output()}")
            try:
                if httpx.get(proc.url + path, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise StartError(f"{proc.name} did not answer {path} in {timeout:.0f}s:\n{proc.output()}")

    def sim(self, *args: str) -> Proc:
        port = free_port()
        proc = self.start(
            "sim",
            [CREDITQ, "sim", "--port", str(port), *args],
            self.env(self.queue("sim")),
            url=f"http://127.0.0.1:{port}",
        )
        self.wait_http(proc, "/__sim/stats")
        return proc

    @staticmethod
    def _creditq(launch: list[str] | None) -> list[str]:
        """The command that runs ``creditq``: the console script, or bench/launch.py with a fix applied."""
        return [sys.executable, "-m", "bench.launch", *launch, "--"] if launch is not None else [CREDITQ]

    def api(
        self, queue: str, workers: int = 1, launch: list[str] | None = None, extra: dict[str, str] | None = None
    ) -> Proc:
        port = free_port()
        extra = dict(extra or {})
        if launch is not None:
            extra.setdefault("PYTHONPATH", str(ROOT))
        proc = self.start(
            f"api{workers}",
            [*self._creditq(launch), "api", "--port", str(port), "--workers", str(workers)],
            self.env(queue, **extra),
            url=f"http://127.0.0.1:{port}",
        )
        self.wait_http(proc, "/healthz")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # connected to Postgres and Redis (the pools open lazily)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(proc.url + "/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        return proc

    def worker(self, queue: str, extra: dict[str, str] | None = None, launch: list[str] | None = None) -> Proc:
        extra = dict(extra or {})
        if launch is not None:
            extra.setdefault("PYTHONPATH", str(ROOT))
        proc = self.start("worker", [*self._creditq(launch), "worker"], self.env(queue, **extra))
        asyncio.run(self._wait_worker(proc, queue))
        return proc

    async def _wait_worker(self, proc: Proc, queue: str, timeout: float = 30) -> None:
        """Until arq's health-check key of the queue appears (the worker polls), or the process dies."""
        r = aioredis.Redis.from_url(self.redis_url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not proc.alive():
                    raise StartError(f"worker exited {proc.popen.returncode}:\n{proc.output()}")
                if await r.exists(queue + ":health-check"):
                    return
                await asyncio.sleep(0.1)
        finally:
            await r.aclose()
        raise StartError(f"worker did not start polling {queue} in {timeout:.0f}s:\n{proc.output()}")

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        """Stop every process this run started (newest first). Idempotent."""
        for p in reversed(self.procs):
            p.stop(5)
        self.procs.clear()
        if not self.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --- Accounts ----------------------------------------------------------------------------------------------------


async def create_accounts(database_url: str, n: int, credits: int = HUGE_CREDITS) -> list[str]:
    """Accounts 1..n of tier ``bench`` with ``credits`` each (a real ``grant`` through ``cq_credit``, so the ledger
    stays consistent) and one API key each. Returns the keys, key i-1 for account i. Ids are ``account_id(i)``
    so that pgbench can name them."""
    keys = ["cq_bench_" + secrets.token_urlsafe(24) for _ in range(n)]
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            ids = [account_id(i) for i in range(1, n + 1)]
            await conn.executemany("INSERT INTO accounts (id, tier) VALUES ($1, $2)", [(a, BENCH_TIER) for a in ids])
            await conn.executemany(
                "INSERT INTO api_keys (id, account_id, key_hash) VALUES (cq_new_id('key'), $1, $2)",
                [(a, hashlib.sha256(k.encode()).digest()) for a, k in zip(ids, keys, strict=True)],
            )
            await conn.executemany(
                "SELECT cq_credit($1, 'grant', $2, 'benchmark credits', NULL)", [(a, credits) for a in ids]
            )
    finally:
        await conn.close()
    return keys


async def retire_live_tasks(database_url: str) -> int:
    """Cancel every task still queued or running (and release its hold), so that the next phase's worker, whose
    sweeper re-enqueues live tasks from Postgres, does not pick up the previous phase's leftovers."""
    conn = await asyncpg.connect(database_url)
    try:
        n = await conn.fetchval(
            "WITH f AS (SELECT cq_finish_task(id, 'canceled', ARRAY['queued', 'running'], NULL, 'canceled', "
            "'benchmark phase over') FROM tasks WHERE status IN ('queued', 'running')) SELECT count(*) FROM f"
        )
        return int(n or 0)
    finally:
        await conn.close()


# --- /proc readings ----------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """VmRSS of one process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _all_stats() -> dict[int, tuple[str, int, float]]:
    """pid → (comm, ppid, cpu seconds) for every process."""
    out: dict[int, tuple[str, int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(entry.name)] = (comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def tree(root: int, stats: dict[int, tuple[str, int, float]] | None = None) -> list[int]:
    """``root`` and all its descendants."""
    stats = stats if stats is not None else _all_stats()
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_rss(root: int) -> int:
    return sum(rss_bytes(p) for p in tree(root))


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return float(sum(parts) - idle), float(sum(parts))


class CpuMeter:
    """CPU seconds spent during a window, split by who spent them: named process trees (the API, the load
    generators), Postgres and Redis (by process name), and the whole machine's busy share."""

    def __init__(self, groups: dict[str, Iterable[int]]) -> None:
        self.groups = {k: list(v) for k, v in groups.items()}

    def _read(self) -> tuple[dict[str, float], float, float]:
        stats = _all_stats()
        totals: dict[str, float] = {}
        for name, roots in self.groups.items():
            pids: set[int] = set()
            for r in roots:
                pids.update(tree(r, stats))
            totals[name] = sum(stats[p][2] for p in pids if p in stats)
        totals["postgres"] = sum(s[2] for s in stats.values() if s[0] == "postgres")
        totals["redis"] = sum(s[2] for s in stats.values() if s[0].startswith("redis-server"))
        busy, total = _machine_busy()
        return totals, busy, total

    def __enter__(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self._t0
        end = self._read()
        self.seconds = {k: round(end[0][k] - self._start[0].get(k, 0.0), 3) for k in end[0]}
        self.machine_busy = (end[1] - self._start[1]) / max(1.0, end[2] - self._start[2])

    def shares(self) -> dict[str, float]:
        """Each group's CPU as a fraction of one core over the window."""
        return {k: round(v / self.wall, 3) for k, v in self.seconds.items()} | {
            "machine_busy": round(self.machine_busy, 3)
        }


# --- The machine -------------------------------------------------------------------------------------------------


def _cmd(*args: str) -> str:
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


async def _versions(database_url: str, redis_url: str) -> tuple[str, str, dict[str, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        pg = str(await conn.fetchval("SHOW server_version"))
        settings = {
            r["name"]: str(r["setting"])
            for r in await conn.fetch(
                "SELECT name, setting FROM pg_settings WHERE name IN ('max_connections', 'shared_buffers', "
                "'synchronous_commit', 'fsync', 'commit_delay', 'wal_sync_method')"
            )
        }
    finally:
        await conn.close()
    r = aioredis.Redis.from_url(redis_url)
    try:
        info: dict[str, Any] = await r.info("server")
        rv = str(info.get("redis_version", "?"))
    finally:
        await r.aclose()
    return pg, rv, settings


def machine(database_url: str, redis_url: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = m.group(1).strip() if m else ""
    pg, rv, pg_settings = asyncio.run(_versions(database_url, redis_url))
    return {
        "nproc": _cmd("nproc"),
        "cpu": cpu,
        "free_h": _cmd("free", "-h"),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "postgres": pg,
        "postgres_settings": pg_settings,
        "redis": rv,
        "pgbench": _cmd("pgbench", "--version"),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        # Which code was measured: the commit, and the files changed on top of it (several people work here).
        "git_commit": _cmd("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "git_changed_files": len(_cmd("git", "-C", str(ROOT), "status", "--porcelain").splitlines()),
    }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t: ...`` then ``t[0]`` is the elapsed seconds."""
    out: list[float] = []
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - t0)
