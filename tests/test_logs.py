"""Logs: JSON lines with the task's context, and never a secret.

A submit + provider callback + settlement runs through real API and worker processes; their output (JSON lines)
is then searched for every secret in play: the client's API key, the admin token, the provider key, and the
task's callback token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import time
from typing import Any

import asyncpg
import httpx
import pytest
import structlog

from shared.config import Settings
from shared.ledger import tasks
from shared.logging import configure
from tests.apiserver import free_port
from tests.conftest import Proc, Processes

ADMIN_TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
IMAGE = "google/nano-banana"


def _lines(proc: Proc) -> list[dict[str, Any]]:
    """The process's JSON log lines (other output, such as a server's start banner, is skipped)."""
    out = []
    for line in proc.output().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_redaction_of_secret_keys_and_secret_looking_values(settings: Settings) -> None:
    stream = io.StringIO()
    configure(settings, stream)
    try:
        log = structlog.get_logger("test")
        log.info(
            "probe",
            api_key="cq_0123456789abcdefghijklmnop",
            token="t0ps3cret",
            url="https://example.com/hook?task=t1&token=t0ps3cret",
            header="Bearer t0ps3cret",
            note="key cq_0123456789abcdefghijklmnop was used",
        )
    finally:
        configure(settings)
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    text = json.dumps(line)
    assert "t0ps3cret" not in text and "0123456789abcdefghijklmnop" not in text
    assert line["url"] == "https://example.com/hook?task=t1&token=[redacted]"
    assert line["api_key"] == "[redacted]"


def test_structlog_and_stdlib_lines_share_one_format_and_one_level(settings: Settings) -> None:
    """creditq's own lines (rendered by structlog, never through stdlib logging) and a library's stdlib records
    come out as the same JSON lines, with the same keys, context and scrubbing; CREDITQ_LOG_LEVEL drops lines of
    both below it; a stream that cannot be written loses the line and never fails the caller."""
    stream = io.StringIO()
    configure(dataclasses.replace(settings, log_format="json", log_level="warning"), stream)
    structlog.configure(cache_logger_on_first_use=False)  # this test's level must not stay with a cached logger
    try:
        log = structlog.get_logger("creditq.test")
        lib = logging.getLogger("arq.worker")
        with structlog.contextvars.bound_contextvars(request_id="req-one-format"):
            log.info("hidden.own")
            lib.info("hidden %s", "stdlib")
            log.warning("own.line", url="https://x.example/cb?token=t0ps3cret")
            lib.warning("stdlib line at https://x.example/cb?token=t0ps3cret")
        closed = io.StringIO()
        configure(dataclasses.replace(settings, log_format="json"), closed)
        closed.close()
        log.info("lost.line")
        lib.warning("lost too")
    finally:
        configure(settings)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [x["event"] for x in lines] == ["own.line", "stdlib line at https://x.example/cb?token=[redacted]"]
    assert [sorted(x) for x in lines] == [
        ["event", "level", "request_id", "timestamp", "url"],
        ["event", "level", "request_id", "timestamp"],
    ]
    assert all(x["level"] == "warning" and x["request_id"] == "req-one-format" for x in lines)
    assert lines[0]["url"] == "https://x.example/cb?token=[redacted]"


@pytest.mark.slow
async def test_submit_and_callback_log_context_and_no_secrets(procs: Processes, pool: asyncpg.Pool) -> None:
    sim = procs.sim("--time-scale", "0.1")
    port = free_port()
    public = {"CREDITQ_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    api = procs.api(env=public, port=port)
    worker = procs.worker(env={**public, "KIE_TIMEOUT": "5"})
    with httpx.Client(base_url=api.url, timeout=10) as client:
        created = client.post("/v1/admin/accounts", json={"credits": 50, "tier": "pro"}, headers=ADMIN)
        assert created.status_code == 201, created.text
        api_key = created.json()["apiKey"]
        account_id = created.json()["accountId"]
        key = {"Authorization": f"Bearer {api_key}", "X-Request-ID": "req-logs-1"}
        r = client.post("/v1/jobs", json={"model": IMAGE, "input": {"prompt": "a fox [sim:seconds=1]"}}, headers=key)
        assert r.status_code == 202, r.text
        task_id = r.json()["taskId"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/jobs/{task_id}", headers=key).json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the task did not succeed in 30 s"
            time.sleep(0.2)
    assert httpx.get(f"{sim.url}/__sim/stats").json()["callbacksSent"] >= 1  # the callback path really ran
    row = await tasks.get(pool, task_id)
    time.sleep(0.5)  # the worker's last lines

    secrets = {
        "the client's API key": api_key,
        "the admin token": ADMIN_TOKEN,
        "the provider key": "sim-key",
        "the callback token": row["callback_token"],
    }
    for proc in (api, worker):
        output = proc.output()
        for what, secret in secrets.items():
            assert secret not in output, f"{what} is in the {proc.name}'s log"

    api_lines = _lines(api)
    queued = [x for x in api_lines if x.get("event") == "task.queued" and x.get("task_id") == task_id]
    assert len(queued) == 1, api_lines
    assert queued[0]["request_id"] == "req-logs-1"
    assert queued[0]["account_id"] == account_id and queued[0]["model"] == IMAGE
    assert (queued[0]["money"], queued[0]["amount"]) == ("hold", 4)

    worker_lines = [x for x in _lines(worker) if x.get("task_id") == task_id]
    events = [x["event"] for x in worker_lines]
    assert "task.running" in events and "task.succeeded" in events, events
    captured = [x for x in worker_lines if x["event"] == "money.capture"]
    assert len(captured) == 1, events
    assert (captured[0]["money"], captured[0]["amount"]) == ("capture", 4)
    assert captured[0]["provider_task_id"] == row["provider_task_id"]
    assert captured[0]["account_id"] == account_id
    for x in worker_lines:
        if not x["event"].startswith(("task.", "money.")):
            continue
        assert {"task_id", "account_id", "model", "provider_task_id"} <= x.keys(), x


async def test_batched_submits_log_their_own_request_id(procs: Processes) -> None:
    """Concurrent submits of one account share one statement (group commit), yet each task.queued line carries
    the request_id of the request that made that task."""
    api = procs.api()
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        created = await client.post("/v1/admin/accounts", json={"credits": 400, "tier": "pro_plus"}, headers=ADMIN)
        assert created.status_code == 201, created.text
        key = created.json()["apiKey"]

        async def one(i: int) -> tuple[str, str]:
            headers = {"Authorization": f"Bearer {key}", "X-Request-ID": f"req-batch-{i}"}
            body = {"model": IMAGE, "input": {"prompt": f"batch {i}"}}
            r = await client.post("/v1/jobs", json=body, headers=headers)
            assert r.status_code == 202, r.text
            return r.json()["taskId"], f"req-batch-{i}"

        made = dict(await asyncio.gather(*(one(i) for i in range(30))))
    await asyncio.sleep(0.3)
    queued = {x["task_id"]: x["request_id"] for x in _lines(api) if x.get("event") == "task.queued"}
    assert {t: queued.get(t) for t in made} == made


async def test_a_500_logs_its_traceback_as_json_with_the_request_id(api_settings: Settings) -> None:
    """A route that raises: the JSON line of the 500 carries the structured traceback (type, message, frames, no
    locals), the request id, and no secret from the exception's message."""
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from api.app import create_app
    from tests.apiserver import serve

    async def exploding_handler(request: Request) -> Response:
        secret_local = "cq_thisisalocalsecretvalue1234"  # noqa: F841 - must never reach the log
        raise RuntimeError("kaboom at https://hook.example/cb?token=t0ps3cret")

    json_settings = dataclasses.replace(api_settings, log_format="json")
    stream = io.StringIO()
    configure(json_settings, stream)
    # Not cached: a logger bound under this test's configuration would keep it (and its stream) for later tests.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        app = create_app(json_settings)
        app.router.routes.append(Route("/boom", exploding_handler))
        async with serve(json_settings, app) as local:
            r = await local.client.get("/boom", headers={"X-Request-ID": "req-trace-1"})
    finally:
        configure(api_settings)
    assert r.status_code == 500
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    [line] = [x for x in lines if x.get("event") == "request.internal_error"]
    assert line["request_id"] == "req-trace-1"
    assert line["level"] == "error" and line["path"] == "/boom"
    [exc] = line["exception"]
    assert exc["exc_type"] == "RuntimeError"
    assert exc["exc_value"] == "kaboom at https://hook.example/cb?token=[redacted]"
    assert exc["frames"][-1]["name"] == "exploding_handler"
    assert all("locals" not in frame for frame in exc["frames"])
    text = stream.getvalue()
    assert "t0ps3cret" not in text and "thisisalocalsecretvalue" not in text
    assert "exc_info" not in line


def test_a_console_traceback_shows_no_locals_and_no_secrets(settings: Settings) -> None:
    """On a terminal a traceback is plain text: no frame locals (one may hold a key) and scrubbed like any line."""
    stream = io.StringIO()
    configure(dataclasses.replace(settings, log_format="console"), stream)
    structlog.configure(cache_logger_on_first_use=False)
    try:
        api_key = "cq_live_0123456789abcdefSECRET"  # a local of the failing frame
        try:
            raise RuntimeError(f"could not call https://x.example/cb?token=t0ps3cret with {len(api_key)}")
        except RuntimeError:
            structlog.get_logger("creditq.test").exception("step.error")
    finally:
        configure(settings)
    out = stream.getvalue()
    assert "step.error" in out and "Traceback (most recent call last)" in out and "RuntimeError" in out
    assert "t0ps3cret" not in out and "token=[redacted]" in out
    assert "0123456789abcdefSECRET" not in out  # the local's value is not printed
