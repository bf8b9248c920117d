"""Throwaway servers of our own: a Postgres cluster (initdb in a temp dir, its own port) and a ``redis-server``
without persistence on its own port. The soak (and ``tests/test_outage.py``) start, stop and crash them at will.

Postgres refuses to run as root, so when we are root the cluster's tools run as the ``postgres`` user through
``runuser``; the machine's server binaries are found under ``/usr/lib/postgresql/<version>/bin`` (or on PATH).
Nothing here is shared with the machine's own Postgres or Redis: each server lives in a directory of its own and
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REDIS_SERVER = os.environ.get("CREDITQ_REDIS_SERVER", "/usr/bin/redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, up: bool, timeout: float) -> bool:
    """Wait until 127.0.0.1:``port`` accepts connections (``up``) or refuses them; True if it happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return True
        except OSError:
            if not up:
                return True
        time.sleep(0.05)
    return False


# --- Postgres -----------------------------------------------------------------------------------------------


def postgres_tools() -> tuple[list[str], Path] | str:
    """(the command prefix that runs a Postgres tool, the bin directory), or why a cluster cannot be made.

    As root the prefix is ``runuser -u postgres --`` (Postgres refuses root); otherwise it is empty."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            return "runuser is not installed (needed to run Postgres as the postgres user when root)"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "there is no postgres user"
        prefix = [runuser, "-u", "postgres", "--"]
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for found in candidates:
        bindir = Path(found)
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return prefix, bindir
    return "no Postgres server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin or on PATH"


@dataclass
class PostgresCluster:
    """A throwaway cluster in ``root`` listening on 127.0.0.1:``port`` (trust auth, user postgres, no fsync).

    :meth:`create` makes one (``initdb``); :meth:`start` / :meth:`stop` (``-m immediate``: as a crash would) may
    be called any number of times; :meth:`destroy` stops it and deletes its directory. Not thread-safe."""

    prefix: list[str]
    bindir: Path
    root: Path
    port: int

    @classmethod
    def create(cls, port: int | None = None, prefix_dir: str = "creditq-pg-") -> PostgresCluster:
        """initdb a new cluster in a fresh temp directory. Raises RuntimeError (with the reason) if it cannot."""
        tools = postgres_tools()
        if isinstance(tools, str):
            raise RuntimeError(f"cannot make a throwaway Postgres: {tools}")
        prefix, bindir = tools
        root = Path(tempfile.mkdtemp(prefix=prefix_dir))
        if prefix:
            shutil.chown(root, "postgres", "postgres")
        cluster = cls(prefix, bindir, root, port or free_port())
        try:
            cluster._run("initdb", "-D", str(cluster.data), "-A", "trust", "-U", "postgres", "--no-sync")
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cluster

    @property
    def data(self) -> Path:
        """The data directory."""
        return self.root / "data"

    def url(self, database: str = "creditq") -> str:
        """The connection URL of ``database`` on this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(  # noqa: S603 - our own arguments, no user input
            [*self.prefix, str(self.bindir / tool), *args],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections. Raises RuntimeError."""
        # fsync=off is safe here: a stop -m immediate kills the server, not the machine, so what was written
        # stays in the page cache. synchronous_commit stays on: with it off, a commit already answered could be
        # lost by the immediate stop, which is not the durability creditq is promised.
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "postgres.log"), "-w", "start")

    def stop(self) -> None:
        """Stop it the way a crash would (``-m immediate``: no checkpoint, every client cut off). Raises
        RuntimeError if it was not running."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def log(self) -> str:
        """The server's log."""
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        """Stop the server if it runs and delete the cluster's directory. Never raises."""
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


async def create_database(admin_url: str, name: str) -> None:
    """``CREATE DATABASE name`` through ``admin_url`` (a database that exists, e.g. ``postgres``)."""
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


# --- Redis --------------------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A ``redis-server`` on 127.0.0.1:``port`` with no persistence (``--save ''``, no AOF): a restart loses
    everything, as a crash of a cache without persistence does. :meth:`start` / :meth:`stop` / :meth:`kill` may be
    called any number of times; :meth:`destroy` stops it and deletes its directory."""

    root: Path
    port: int
    binary: str = REDIS_SERVER
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def create(cls, port: int | None = None) -> RedisServer:
        """A server (not started) in a fresh temp directory. Raises RuntimeError if redis-server is missing."""
        if not Path(REDIS_SERVER).is_file() and shutil.which("redis-server") is None:
            raise RuntimeError(f"cannot make a throwaway Redis: no {REDIS_SERVER}")
        binary = REDIS_SERVER if Path(REDIS_SERVER).is_file() else str(shutil.which("redis-server"))
        return cls(Path(tempfile.mkdtemp(prefix="creditq-redis-")), port or free_port(), binary)

    @property
    def url(self) -> str:
        """The REDIS_URL of its database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def running(self) -> bool:
        """True while the server process lives."""
        return self.popen is not None and self.popen.poll() is None

    def start(self, timeout: float = 15) -> None:
        """Start the server and wait until it accepts connections. Raises RuntimeError."""
        if self.running():
            return
        log = (self.root / "redis.log").open("ab")
        self.popen = subprocess.Popen(  # noqa: S603 - our own arguments
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if not _wait_port(self.port, up=True, timeout=timeout):
            self.kill()
            raise RuntimeError(f"redis-server did not listen on port {self.port} within {timeout}s")

    def kill(self) -> None:
        """SIGKILL the server (its data is gone) and wait for it. Never raises."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)
        _wait_port(self.port, up=False, timeout=5)

    def stop(self) -> None:
        """Stop the server (SIGKILL: without persistence there is nothing to save)."""
        self.kill()

    def destroy(self) -> None:
        """Kill the server and delete its directory. Never raises."""
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
