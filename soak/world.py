"""The soak's world: a throwaway Postgres and Redis, the simulator, several API processes and workers, all real
``creditq`` subprocesses that the soak owns, kills, restarts and stops.

Every process runs in a session of its own (so a SIGKILL of its group leaves no child behind) with its output in a
log file of the run directory. :meth:`World.close` stops everything and deletes the temp directories, whatever
state the run is in; it is also registered with ``atexit``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from soak.servers import PostgresCluster, RedisServer, create_database, free_port

ROOT = Path(__file__).resolve().parent.parent
CREDITQ = str(Path(sys.executable).with_name("creditq"))
ADMIN_TOKEN = "soak-admin"  # noqa: S105 - a throwaway server's admin token
PAYMENTS_SECRET = "whsec_soak"  # noqa: S105 - a throwaway server's signing secret
KIE_KEY = "soak-kie-key"
SOAK_TIER = "soak"
SWEEP_SECONDS = 2.0
KIE_TIMEOUT = 5.0
SIM_CREDITS = 1_000_000


@dataclass(frozen=True)
class Shape:
    """How big the world is and how fast its clocks run (part of the log's header: a replay uses the same)."""

    apis: int = 2
    workers: int = 3
    # Deadlines per model kind, seconds: short, so that a run sees tasks end by their deadline.
    deadlines: tuple[tuple[str, float], ...] = (("image", 20.0), ("video", 40.0), ("audio", 30.0))

    def deadline(self, kind: str) -> float:
        """The deadline of a model of ``kind``."""
        return dict(self.deadlines)[kind]

    def as_json(self) -> dict[str, Any]:
        """For the log."""
        return {"apis": self.apis, "workers": self.workers, "deadlines": dict(self.deadlines)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shape:
        """Inverse of :meth:`as_json`."""
        return cls(
            apis=int(data["apis"]),
            workers=int(data["workers"]),
            deadlines=tuple((str(k), float(v)) for k, v in dict(data["deadlines"]).items()),
        )


@dataclass
class Proc:
    """One subprocess of the world. ``argv`` and ``env`` are kept so that it can be started again."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    url: str = ""
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    started_at: float = 0.0  # time.monotonic() of the last start
    unexpected_exits: list[int] = field(default_factory=list)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        """Start it (its output appended to its log)."""
        with self.log.open("ab") as fh:
            fh.write(f"\n----- start {self.starts + 1} at {time.strftime('%H:%M:%S')} -----\n".encode())
            fh.flush()
            self.popen = subprocess.Popen(  # noqa: S603 - our own console script and arguments
                self.argv,
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.log.parent,
                start_new_session=True,
            )
        self.starts += 1
        self.started_at = time.monotonic()

    def kill(self) -> None:
        """SIGKILL its whole process group and reap it. Never raises."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def stop(self, timeout: float = 8) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds. Never raises."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.kill()

    def tail(self, chars: int = 3000) -> str:
        """The end of its log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class World:
    """Owns every server and process of one soak run. Use as a context manager (or call :meth:`close`)."""

    def __init__(self, shape: Shape, run_dir: Path) -> None:
        self.shape = shape
        self.run_dir = run_dir
        self.proc_dir = run_dir / "procs"
        self.proc_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="creditq-soak-"))
        self.pg: PostgresCluster | None = None
        self.redis: RedisServer | None = None
        self.sim: Proc | None = None
        self.apis: list[Proc] = []
        self.workers: list[Proc] = []
        self._closed = False
        atexit.register(self.close)

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- setup --

    @property
    def pricing_path(self) -> Path:
        return self.tmp / "pricing.toml"

    def write_pricing(self) -> dict[str, dict[str, Any]]:
        """The bundled price list with the soak's short deadlines and a ``soak`` tier without limits (so that
        only money and faults refuse a submit). Returns the models as parsed: {model: {kind, family, cost, ...}}."""
        text = (ROOT / "shared" / "pricing.toml").read_text()
        parsed = tomllib.loads(text)
        kinds = {str(m["model"]): str(m["kind"]) for m in parsed.get("models", [])}

        # Rewrite each model's deadline_seconds (and typical_seconds, so that callbacks' first check is early) in
        # place: whatever else a model block says stays as the product ships it.
        out: list[str] = []
        current: str | None = None
        for line in text.splitlines():
            m = re.match(r'\s*model\s*=\s*"([^"]+)"', line)
            if m:
                current = m.group(1)
            if current is not None and re.match(r"\s*deadline_seconds\s*=", line):
                line = f"deadline_seconds = {self.shape.deadline(kinds[current]):g}"
            elif current is not None and re.match(r"\s*typical_seconds\s*=", line):
                line = "typical_seconds = 3"
            elif line.startswith("[tiers"):
                current = None
            out.append(line)
        text = "\n".join(out) + (
            f"\n\n# Added by the soak: a tier without limits.\n[tiers.{SOAK_TIER}]\nmonthly_credits = 0\n"
            "daily_jobs = 0\nconcurrent_jobs = 0\ncooldown_seconds = {}\n"
        )
        final = tomllib.loads(text)  # fail here, not in a child process
        self.pricing_path.write_text(text)
        return {str(m["model"]): dict(m) for m in final["models"]}

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every creditq process of this run."""
        assert self.pg is not None
        assert self.redis is not None
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("CREDITQ_", "KIE_", "PAYMENTS_", "PROMETHEUS_"))
        }
        env.update(
            {
                "DATABASE_URL": self.pg.url(),
                "REDIS_URL": self.redis.url,
                "CREDITQ_QUEUE": "cqsoak",
                "CREDITQ_PRICING": str(self.pricing_path),
                "CREDITQ_ADMIN_TOKEN": ADMIN_TOKEN,
                "PAYMENTS_WEBHOOK_SECRET": PAYMENTS_SECRET,
                "CREDITQ_SWEEP_SECONDS": str(SWEEP_SECONDS),
                "CREDITQ_LOG_FORMAT": "json",
                "CREDITQ_LOG_LEVEL": "info",
                "CREDITQ_DB_POOL_SIZE": "8",
                "KIE_API_KEY": KIE_KEY,
                "KIE_TIMEOUT": str(KIE_TIMEOUT),
                "KIE_BASE_URL": self.sim.url if self.sim else "http://127.0.0.1:9",
                # Callbacks go to the first API process; while it is down they are lost (the sim retries 3 times).
                "CREDITQ_PUBLIC_URL": self.apis[0].url if self.apis else "",
                "CREDITQ_ALLOW_PRIVATE_CALLBACKS": "true",
            }
        )
        env.update(extra)
        return env

    def up(self) -> None:
        """Start Postgres (with a migrated ``creditq`` database), Redis, the simulator, the APIs and the workers,
        each checked ready. Raises RuntimeError naming what did not come up."""
        self.pg = PostgresCluster.create(prefix_dir="creditq-soak-pg-")
        self.pg.start()
        asyncio.run(create_database(self.pg.url("postgres"), "creditq"))
        self.redis = RedisServer.create()
        self.redis.start()
        self.write_pricing()
        sim_port = free_port()
        sim_args = ["sim", "--port", str(sim_port), "--api-key", KIE_KEY, "--credits", str(SIM_CREDITS)]
        if self.sim_supports("--rate-limit-style"):
            # Beyond its limits the provider answers HTTP 200 with body code 429 and no Retry-After: the harder
            # style, when the simulator has it (the provider's second release).
            sim_args += ["--rate-limit-style", "body"]
        self.sim = self._proc("sim", sim_args, url=f"http://127.0.0.1:{sim_port}")
        self.sim.start()
        self.wait_http(self.sim, "/__sim/stats")
        migrate = subprocess.run(  # noqa: S603 - our own console script
            [CREDITQ, "migrate"], env=self.env(), capture_output=True, text=True, timeout=120, check=False
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"creditq migrate failed: {migrate.stderr[-2000:] or migrate.stdout[-2000:]}")
        ports = [free_port() for _ in range(self.shape.apis)]
        # The API processes are made before any is started: the first one's URL is everybody's CREDITQ_PUBLIC_URL.
        self.apis = [
            Proc(f"api{i}", [], {}, self.proc_dir / f"api{i}.log", url=f"http://127.0.0.1:{port}")
            for i, port in enumerate(ports)
        ]
        for i, (api, port) in enumerate(zip(self.apis, ports, strict=True)):
            self.apis[i] = self._proc(api.name, ["api", "--port", str(port)], url=api.url)
            self.apis[i].start()
        for api in self.apis:
            self.wait_http(api, "/healthz")
        self.workers = [self._proc(f"worker{i}", ["worker"]) for i in range(self.shape.workers)]
        for w in self.workers:
            w.start()

    @staticmethod
    def sim_supports(option: str) -> bool:
        """Does ``creditq sim`` take ``option``?"""
        done = subprocess.run(  # noqa: S603 - our own console script
            [CREDITQ, "sim", "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        return option in done.stdout

    def _proc(self, name: str, args: list[str], url: str = "") -> Proc:
        return Proc(name, [CREDITQ, *args], self.env(), self.proc_dir / f"{name}.log", url=url)

    @staticmethod
    def wait_http(proc: Proc, path: str, timeout: float = 30) -> None:
        """Wait until ``proc`` answers ``path`` below 500. Raises RuntimeError if it exits or does not answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
            try:
                if httpx.get(proc.url + path, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{proc.name} did not answer {path} within {timeout}s:\n{proc.tail()}")

    # -- during the run --

    def processes(self) -> list[Proc]:
        """Every creditq process (simulator, APIs, workers)."""
        return [p for p in (self.sim, *self.apis, *self.workers) if p is not None]

    def revive(self) -> list[str]:
        """Start again every API or worker that died without being killed by the soak (a crash); returns their
        names. A supervisor would do the same; the soak counts it."""
        revived = []
        for p in (*self.apis, *self.workers):
            if p.popen is not None and not p.alive():
                p.unexpected_exits.append(int(p.popen.returncode))
                p.start()
                revived.append(p.name)
        return revived

    def audit(self) -> tuple[int, str]:
        """``creditq audit --json``: (exit status, output)."""
        done = subprocess.run(  # noqa: S603 - our own console script
            [CREDITQ, "audit", "--json"], env=self.env(), capture_output=True, text=True, timeout=120, check=False
        )
        return done.returncode, done.stdout + done.stderr

    # -- teardown --

    def close(self) -> None:
        """Stop every process and server and delete the temp directories. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        for p in (*self.workers, *self.apis):
            with contextlib.suppress(Exception):
                p.stop(timeout=5)
        if self.sim is not None:
            with contextlib.suppress(Exception):
                self.sim.stop(timeout=5)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.destroy()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                (self.proc_dir / "postgres.log").write_text(self.pg.log()[-200_000:])
            self.pg.destroy()
        shutil.rmtree(self.tmp, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
