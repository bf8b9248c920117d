"""The client commands run as a user runs them: ``creditq`` subprocesses against a real API over HTTP.

The in-process API (its own queue: no worker sees its tasks, so they stay ``queued``) serves the commands that
need no worker (models, account, jobs list|get|cancel, submit's inputs and idempotency, suggestions, ``.env``);
a stack of real processes (simulator, API, worker) serves ``submit --wait`` and Ctrl-C during it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.config import Settings
from tests.apiserver import Api, serve
from tests.conftest import CREDITQ, MakeAccount, Processes


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CREDITQ_API_URL", "CREDITQ_API_KEY")}
    env.update(extra)
    return env


async def cq(
    *args: str, url: str | None = None, key: str | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``creditq ARGS`` in a thread (the in-process API must keep serving meanwhile)."""
    env = _clean_env()
    if url is not None:
        env["CREDITQ_API_URL"] = url
    if key is not None:
        env["CREDITQ_API_KEY"] = key
    return await asyncio.to_thread(
        subprocess.run, [CREDITQ, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


async def test_models_lists_the_price_list(api: Api) -> None:
    r = await cq("models", url=api.url)
    assert r.returncode == 0, r.stderr
    assert "google/nano-banana" in r.stdout and "veo3_fast" in r.stdout
    r = await cq("models", "--json", url=api.url)
    models = {m["model"]: m for m in json.loads(r.stdout)["items"]}
    assert models["google/nano-banana"]["cost"] == 4


async def test_account_and_dotenv(api: Api, make_account: MakeAccount, tmp_path: Path) -> None:
    account, key = await make_account(credits=77, tier="pro")
    r = await cq("account", "--json", url=api.url, key=key)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["available"] == 77
    # No variables at all: ./.env supplies both.
    (tmp_path / ".env").write_text(f"CREDITQ_API_URL={api.url}\nCREDITQ_API_KEY={key}\n")
    r = await cq("account", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert account.id in r.stdout and "77" in r.stdout
    # A real variable wins over .env.
    r = await cq("account", key="cq_wrong", cwd=tmp_path)
    assert r.returncode == 1 and "unauthenticated" in r.stderr


async def test_submit_inputs_idempotency_get_list_cancel(
    api: Api, make_account: MakeAccount, pool: asyncpg.Pool
) -> None:
    account, key = await make_account(credits=100, tier="pro")
    args = ("submit", "--model", "bytedance/seedream-v4-text-to-image", "--prompt", "a fox")
    extra = ("--input", "max_images=2", "-i", "image_size=square", "--idempotency-key", "cli-1", "--json")
    first = await cq(*args, *extra, url=api.url, key=key)
    assert first.returncode == 0, first.stderr
    task = json.loads(first.stdout)
    again = await cq(*args, *extra, url=api.url, key=key)
    assert json.loads(again.stdout)["taskId"] == task["taskId"]  # the same task: nothing held twice
    row = await pool.fetchrow("SELECT input, cost FROM tasks WHERE id = $1", task["taskId"])
    stored = json.loads(row["input"]) if isinstance(row["input"], str) else dict(row["input"])
    assert stored["max_images"] == 2  # a JSON number, not the string "2"
    assert stored["image_size"] == "square" and stored["prompt"] == "a fox"
    a = await pool.fetchrow("SELECT balance, held FROM accounts WHERE id = $1", account.id)
    assert (a["balance"], a["held"]) == (100, task["cost"])

    got = await cq("jobs", "get", task["taskId"], "--json", url=api.url, key=key)
    assert json.loads(got.stdout)["status"] == "queued"
    listed = await cq("jobs", "list", "--status", "queued", url=api.url, key=key)
    assert listed.returncode == 0 and task["taskId"] in listed.stdout

    canceled = await cq("jobs", "cancel", task["taskId"], url=api.url, key=key)
    assert canceled.returncode == 0, canceled.stderr
    assert "canceled" in canceled.stdout
    a = await pool.fetchrow("SELECT balance, held FROM accounts WHERE id = $1", account.id)
    assert (a["balance"], a["held"]) == (100, 0)  # released
    # A canceled job answers again; an unknown one is not found (exit 1, the API's code on stderr).
    assert (await cq("jobs", "cancel", task["taskId"], url=api.url, key=key)).returncode == 0
    missing = await cq("jobs", "get", "task_nope", url=api.url, key=key)
    assert missing.returncode == 1 and "not_found" in missing.stderr


async def test_unknown_model_suggests_the_close_one(api: Api, make_account: MakeAccount) -> None:
    _, key = await make_account(credits=10)
    for typo in ("google/nano-banan", "nano-banana"):
        r = await cq("submit", "--model", typo, "--prompt", "x", url=api.url, key=key)
        assert r.returncode == 1
        assert "did you mean google/nano-banana?" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


async def test_usage_errors_and_help_show_defaults() -> None:
    r = await cq("submit", "--model", "google/nano-banana", "--input", "novalue", key="cq_x")
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr
    r = await cq("submit", "--model", "google/nano-banana", "--prompt", "x")
    assert r.returncode == 2 and "CREDITQ_API_KEY" in r.stderr
    for command, shown in (
        (("api",), "default: 8000"),
        (("sim",), "default: 8100"),
        (("dev",), "default: 8000"),
        (("accounts", "create"), "default: free"),
        (("submit",), "default: http://127.0.0.1:8000"),
        (("jobs", "list"), "default: 20"),
        (("migrate",), "Apply pending database migrations"),
        (("worker",), "Run one arq worker"),
    ):
        h = await cq(*command, "--help")
        assert h.returncode == 0 and shown in h.stdout, (command, h.stdout)


async def test_not_cancelable_says_why(api: Api, make_account: MakeAccount, pool: asyncpg.Pool) -> None:
    _, key = await make_account(credits=10, tier="pro")
    r = await cq("submit", "--model", "google/nano-banana", "--prompt", "x", "--json", url=api.url, key=key)
    task_id = json.loads(r.stdout)["taskId"]
    await pool.execute("UPDATE tasks SET status = 'running', provider_task_id = 'p1' WHERE id = $1", task_id)
    r = await cq("jobs", "cancel", task_id, url=api.url, key=key)
    assert r.returncode == 1 and "not_cancelable" in r.stderr and "only a queued job" in r.stderr
    await pool.execute("UPDATE tasks SET status = 'queued', provider_task_id = NULL WHERE id = $1", task_id)
    assert (await cq("jobs", "cancel", task_id, url=api.url, key=key)).returncode == 0


# --- submit --wait against the real stack ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    p = Processes(base_env, tmp_path_factory.mktemp("stack"))
    try:
        p.sim("--time-scale", "0.2")
        api = p.api()
        p.env["CREDITQ_API_URL"] = api.url
        p.worker()
        yield p
    finally:
        p.close()


async def test_submit_wait_follows_to_the_end(stack: Processes, make_account: MakeAccount) -> None:
    _, key = await make_account(credits=50, tier="pro")
    url = stack.env["CREDITQ_API_URL"]
    r = await cq(
        "submit", "--model", "google/nano-banana", "--prompt", "[sim:seconds=2] a lighthouse", "--wait",
        url=url, key=key,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "succeeded: charged 4 credits" in r.stdout
    assert "https://" in r.stdout  # the result URL
    # It follows the live stream (GET /v1/jobs/{id}/events), and says so; the fallback is tested below.
    assert "(live stream)" in r.stdout and "polling" not in r.stdout, r.stdout
    assert r.stdout.index("running") < r.stdout.index("succeeded")  # one line per change, in order
    failed = await cq(
        "submit", "--model", "google/nano-banana", "--prompt", "[sim:seconds=1] [sim:fail=500] x", "--wait",
        url=url, key=key,
    )  # fmt: skip
    assert failed.returncode == 1 and "failed: provider_failed" in failed.stdout, failed.stdout


async def test_ctrl_c_during_wait_says_the_job_goes_on(stack: Processes, make_account: MakeAccount) -> None:
    _, key = await make_account(credits=50, tier="pro")
    url = stack.env["CREDITQ_API_URL"]
    env = _clean_env(CREDITQ_API_URL=url, CREDITQ_API_KEY=key)
    proc = subprocess.Popen(
        [CREDITQ, "submit", "--model", "google/nano-banana", "--prompt", "[sim:seconds=60] slow", "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # "task <id>: queued (4 credits held)"
        task_id = first.split()[1].rstrip(":")
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert f"stopped following task {task_id}; the job goes on" in err, err
    assert f"creditq jobs wait {task_id}" in err
    assert "Traceback" not in err
    view = httpx.get(f"{url}/v1/jobs/{task_id}", headers={"Authorization": f"Bearer {key}"}).json()
    assert view["status"] in ("queued", "running")  # not canceled by the Ctrl-C
    # Following it again works (and ends it here quickly: cancel is refused for a running job, so wait).
    r = await cq("jobs", "get", task_id, url=url, key=key)
    assert r.returncode == 0 and task_id in r.stdout


def _no_stream_proxy(upstream: str) -> Starlette:
    """An API in front of the real one that answers its live stream 406 (an older API, or a proxy that refuses
    event streams), forwarding everything else."""
    http = httpx.AsyncClient(base_url=upstream, timeout=30)

    async def forward(request: Request) -> Response:
        if request.url.path.endswith("/events"):
            return JSONResponse({"error": {"code": "not_acceptable", "message": "no streams here"}}, 406)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        r = await http.request(
            request.method, request.url.path, params=request.query_params, content=await request.body(), headers=headers
        )
        return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])


async def test_submit_wait_falls_back_to_polling_when_the_stream_is_refused(
    stack: Processes, make_account: MakeAccount, api_settings: Settings
) -> None:
    _, key = await make_account(credits=20, tier="pro")
    async with serve(api_settings, _no_stream_proxy(stack.env["CREDITQ_API_URL"])) as proxy:
        r = await cq(
            "submit", "--model", "google/nano-banana", "--prompt", "[sim:seconds=1] x", "--wait",
            url=proxy.url, key=key,
        )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "polling every 1 s: the live stream is unavailable" in r.stdout
    assert "succeeded: charged 4 credits" in r.stdout
