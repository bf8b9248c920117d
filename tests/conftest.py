"""Shared fixtures: a fresh Postgres database per test session, its own Redis database and key prefix, and real
processes (simulator, API, workers) started as `creditq` subprocesses.

Nothing touching money or the queue is faked: tests talk to the real Postgres and Redis of the machine, and to the
provider through the simulator over real HTTP. If either service is unreachable the session stops with one line
saying which and how to start it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from shared.config import Settings
from shared.ledger import accounts
from shared.migrate import migrate
from tests import preflight
from tests.apiserver import Api, free_port, serve

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("CREDITQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("CREDITQ_TEST_REDIS", "redis://127.0.0.1:6379")
# Under pytest-xdist each worker process (gw0, gw1, ...) takes its own Redis database: some tests flush theirs.
_XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_DB = (int(os.environ.get("CREDITQ_TEST_REDIS_DB", "13")) + _XDIST_WORKER) % 16
CREDITQ = str(Path(sys.executable).with_name("creditq"))


def pytest_sessionstart(session: pytest.Session) -> None:
    problems = preflight.missing()
    if problems:
        pytest.exit("; ".join(problems), returncode=3)


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_database(run_id: str) -> Iterator[str]:
    """A database migrated once per session; each test module gets a copy of it."""
    name = f"creditq_test_{run_id}"
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    asyncio.run(migrate(Settings.from_env({"DATABASE_URL": url}, dotenv=False)))
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def module_id(run_id: str, request: pytest.FixtureRequest) -> str:
    return f"{run_id}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def database_url(template_database: str, module_id: str) -> Iterator[str]:
    """A fresh, migrated database of this test module's own (a copy of the session's template), dropped at its
    end. Modules never see each other's tasks: a worker started by one cannot pick up another's queued work."""
    name = f"creditq_test_{module_id}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def base_env(database_url: str, module_id: str) -> dict[str, str]:
    """The environment of every creditq process this module starts (and of `settings`)."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": f"{REDIS_BASE}/{REDIS_DB}",
        "CREDITQ_QUEUE": f"cqtest:{module_id}",
        "CREDITQ_ADMIN_TOKEN": "admin-secret",
        "PAYMENTS_WEBHOOK_SECRET": "whsec_test",
        "CREDITQ_SWEEP_SECONDS": "2",
        "CREDITQ_LOG_FORMAT": "json",
        "CREDITQ_LOG_LEVEL": "info",
        "KIE_API_KEY": "sim-key",
        "KIE_BASE_URL": "http://127.0.0.1:9",  # tests that need the simulator set its URL
    }


@pytest.fixture(scope="module")
def settings(base_env: dict[str, str]) -> Settings:
    return Settings.from_env(base_env, dotenv=False)


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    from shared import db

    p = await db.create_pool(settings, max_size=20)
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(settings.redis_url)
    yield r
    await r.aclose()


@pytest.fixture(scope="module")
def api_settings(settings: Settings) -> Settings:
    """The settings of the in-process API: a queue name of its own, so no worker ever sees its tasks."""
    return dataclasses.replace(settings, queue_name=f"{settings.queue_name}:api")


@pytest.fixture(scope="module")
async def api(api_settings: Settings) -> AsyncIterator[Api]:
    """The API served in-process over real HTTP for this module, connected before its first test."""
    async with serve(api_settings) as served:
        await served.app.state.services.db()
        await served.app.state.services.arq()
        yield served


@pytest.fixture
def client(api: Api) -> httpx.AsyncClient:
    return api.client


MakeAccount = Callable[..., Awaitable[tuple[accounts.Account, str]]]


@pytest.fixture
def make_account(pool: asyncpg.Pool) -> MakeAccount:
    """Create an account: ``await make_account(credits=10, tier="pro")`` → (account, api_key)."""

    async def make(
        credits: int = 0, tier: str = "free", external_id: str | None = None
    ) -> tuple[accounts.Account, str]:
        account, _, key = await accounts.create_account(pool, tier, credits, external_id)
        return account, key

    return make


# --- Real processes -------------------------------------------------------------------------------------------


@dataclass
class Proc:
    """A creditq subprocess; its output goes to a log file shown when a test fails."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def stop(self, timeout: float = 15) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return int(self.popen.returncode)


class Processes:
    """Starts creditq subprocesses for one test and stops them all at its end."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = {**os.environ, **env}
        self.tmp = tmp
        self.procs: list[Proc] = []

    def start(self, name: str, *args: str, env: dict[str, str] | None = None, url: str = "") -> Proc:
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        fh = log.open("wb")
        popen = subprocess.Popen(
            [CREDITQ, *args],
            env={**self.env, **(env or {})},
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
        )
        proc = Proc(name, popen, log, url)
        self.procs.append(proc)
        return proc

    def wait_http(self, proc: Proc, path: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited {proc.popen.returncode}:\n{proc.output()[-3000:]}")
            try:
                if httpx.get(proc.url + path, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{proc.name} did not answer {path} in {timeout}s:\n{proc.output()[-3000:]}")

    def sim(self, *args: str, strict: bool = True) -> Proc:
        """Start ``creditq sim`` (``--strict`` unless told otherwise: the project's tests speak to a simulator
        that refuses what the real provider refuses)."""
        port = free_port()
        extra = ("--strict",) if strict else ()
        proc = self.start("sim", "sim", "--port", str(port), *extra, *args, url=f"http://127.0.0.1:{port}")
        self.wait_http(proc, "/__sim/stats")
        self.env["KIE_BASE_URL"] = proc.url
        return proc

    def api(self, env: dict[str, str] | None = None, port: int | None = None) -> Proc:
        port = port or free_port()
        proc = self.start("api", "api", "--port", str(port), env=env, url=f"http://127.0.0.1:{port}")
        self.wait_http(proc, "/healthz")
        return proc

    def worker(self, env: dict[str, str] | None = None) -> Proc:
        return self.start("worker", "worker", env=env)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop(5)


@pytest.fixture
def procs(base_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Processes]:
    """Start real creditq processes: ``procs.sim()``, ``procs.api()``, ``procs.worker()``. The simulator's URL
    becomes KIE_BASE_URL of processes started after it. Logs are printed if the test fails."""
    p = Processes(base_env, tmp_path)
    yield p
    p.close()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for proc in p.procs:
            print(f"----- {proc.name} ({proc.log.name}) -----\n{proc.output()[-4000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep
