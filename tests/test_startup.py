"""Starting processes: every bad setting is one line naming it (API and worker alike, before any connection), and
a worker started while Redis or Postgres is down waits, one log line per attempt, then runs once they are up."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from shared.config import Settings
from shared.errors import ConfigError
from tests.apiserver import free_port
from tests.conftest import CREDITQ, Processes

BAD = [
    ("REDIS_URL", "redis://127.0.0.1:6379/abc"),
    ("REDIS_URL", "redis://127.0.0.1:99999/0"),
    ("REDIS_URL", "redis://127.0.0.1:6379/0?socket_timeout=soon"),
    ("DATABASE_URL", "postgresql://postgres@127.0.0.1:54x2/creditq"),
    ("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432"),
    ("KIE_BASE_URL", "ftp://example.invalid"),
    ("KIE_BASE_URL", "http://127.0.0.1:0"),
    ("CREDITQ_PUBLIC_URL", "http:///nohost"),
    ("CREDITQ_SWEEP_SECONDS", "soon"),
    ("CREDITQ_DB_POOL_SIZE", "0"),
    ("CREDITQ_ALLOW_PRIVATE_CALLBACKS", "maybe"),
]


@pytest.mark.parametrize(("var", "value"), BAD)
def test_bad_value_is_one_line_naming_it(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        Settings.from_env({var: value}, dotenv=False)
    assert var in e.value.message and "\n" not in e.value.message


@pytest.mark.parametrize("command", [("api", "--port", "1"), ("worker",), ("migrate",)])
def test_api_and_worker_refuse_a_bad_redis_url_in_one_line(base_env: dict[str, str], command: tuple[str, ...]) -> None:
    env = {**base_env, "REDIS_URL": "redis://127.0.0.1:6379/abc", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([CREDITQ, *command], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert lines == [
        "creditq: error: REDIS_URL must end in a database number (/0, /1, ...), got /abc: 'redis://127.0.0.1:6379/abc'"
    ]


def _waits(out: str, what: str) -> list[dict[str, object]]:
    lines = []
    for line in out.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "worker.waiting" and rec.get("waiting_for") == what:
            lines.append(rec)
    return lines


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server to start one late")
def test_worker_waits_for_redis_then_runs(procs: Processes, tmp_path: Path) -> None:
    port = free_port()
    worker = procs.worker(env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    deadline = time.monotonic() + 20
    while len(_waits(worker.output(), "redis")) < 3 and time.monotonic() < deadline:
        assert worker.popen.poll() is None, worker.output()
        time.sleep(0.2)
    waits = _waits(worker.output(), "redis")
    assert [w["attempt"] for w in waits[:3]] == [1, 2, 3]
    delays = [float(str(w["retry_in"])) for w in waits[:3]]
    assert delays[0] < delays[1] < delays[2]  # backoff
    assert worker.popen.poll() is None  # still waiting, not exited
    late = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while "Starting worker" not in worker.output() and "provider." not in worker.output():
            assert time.monotonic() < deadline, worker.output()[-3000:]
            assert worker.popen.poll() is None, worker.output()
            time.sleep(0.2)
        assert worker.stop() == 0
    finally:
        late.terminate()
        late.wait(10)


@pytest.mark.slow
def test_worker_waits_for_postgres(procs: Processes) -> None:
    worker = procs.worker(env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/creditq"})
    deadline = time.monotonic() + 15
    while len(_waits(worker.output(), "postgres")) < 2 and time.monotonic() < deadline:
        assert worker.popen.poll() is None, worker.output()
        time.sleep(0.2)
    assert len(_waits(worker.output(), "postgres")) >= 2
    assert "Traceback" not in worker.output()
    assert worker.stop() == 0 or worker.popen.returncode in (-15, 143)
