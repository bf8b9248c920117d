"""The worker end to end: real Postgres, real Redis, the simulator over real HTTP, `creditq worker` processes.

Tasks are made with ``ledger.tasks.submit`` + ``shared.queue.enqueue`` (what the API does), so these tests do not
depend on the API, except the callback test, which needs the API's webhook and is skipped without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from arq import Retry
from arq.connections import ArqRedis
from arq.constants import job_key_prefix

from shared import queue, redis_keys
from shared.config import Settings
from shared.ledger import audit, tasks
from shared.ledger import webhooks as outbox
from shared.pricing import Model, load
from shared.provider_budget import Circuit
from tests.apiserver import free_port
from tests.conftest import MakeAccount, Processes
from worker import deliveries, schedule, step, sweeper
from worker.runtime import Runtime, close_runtime, open_runtime

IMAGE = "google/nano-banana"  # cost 4
VIDEO = "kling/v2-1-standard"  # cost 60
# Short provider timeout: arq's in-progress lease (timeout + slack + 10 s) is what a crashed step waits.
WORKER_ENV = {"KIE_TIMEOUT": "3"}


@pytest.fixture(scope="module")
async def arq_redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    r = await queue.connect(settings)
    yield r
    await r.aclose()


def _model(settings: Settings, name: str) -> Model:
    m = load(settings.pricing_path).model(name)
    assert m is not None
    return m


async def submit(
    pool: asyncpg.Pool,
    arq: ArqRedis | None,
    settings: Settings,
    account_id: str,
    prompt: str,
    model: str = IMAGE,
    callback_url: str | None = None,
    enqueue: bool = True,
) -> str:
    """What the API does: one transaction (task + hold), then enqueue after the commit."""
    sub = await tasks.submit(pool, account_id, _model(settings, model), {"prompt": prompt}, callback_url, None, None)
    task_id = str(sub.task["id"])
    if enqueue and arq is not None:
        await queue.enqueue(arq, settings, task_id)
    return task_id


async def wait_terminal(pool: asyncpg.Pool, task_ids: Iterable[str], timeout: float) -> list[asyncpg.Record]:
    ids = list(task_ids)
    deadline = time.monotonic() + timeout
    while True:
        rows = await pool.fetch("SELECT * FROM tasks WHERE id = ANY($1) ORDER BY created_at, id", ids)
        if all(r["status"] in tasks.TERMINAL for r in rows):
            return list(rows)
        if time.monotonic() > deadline:
            live = [(r["id"], r["status"], r["error_code"]) for r in rows if r["status"] not in tasks.TERMINAL]
            raise AssertionError(f"{len(live)} task(s) not terminal after {timeout}s: {live[:5]}")
        await asyncio.sleep(0.2)


async def account_state(pool: asyncpg.Pool, account_id: str) -> tuple[int, int]:
    r = await pool.fetchrow("SELECT balance, held FROM accounts WHERE id = $1", account_id)
    assert r is not None
    return int(r["balance"]), int(r["held"])


async def entries(pool: asyncpg.Pool, task_id: str) -> list[str]:
    rows = await pool.fetch("SELECT kind FROM ledger_entries WHERE task_id = $1 ORDER BY id", task_id)
    return [r["kind"] for r in rows]


async def clean_audit(pool: asyncpg.Pool, account_ids: Iterable[str]) -> None:
    problems = [p for p in await audit.check(pool, 2) if p.accountId in set(account_ids)]
    assert problems == []


def sim_stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(url + "/__sim/stats").json())


# --- success, failure, refusal, flaky, deadline ---------------------------------------------------------------


@pytest.mark.slow
async def test_outcomes(
    procs: Processes, pool: asyncpg.Pool, arq_redis: ArqRedis, settings: Settings, make_account: MakeAccount
) -> None:
    sim = procs.sim("--time-scale", "0.2")
    worker = procs.worker(env=WORKER_ENV)
    acct, _ = await make_account(credits=100, tier="pro")
    ok = await submit(pool, arq_redis, settings, acct.id, "a cat [sim:seconds=1]")
    fail = await submit(pool, arq_redis, settings, acct.id, "a dog [sim:seconds=1] [sim:fail=500]")
    refused = await submit(pool, arq_redis, settings, acct.id, "nsfw [sim:create=422]")
    flaky = await submit(pool, arq_redis, settings, acct.id, "a fox [sim:seconds=5] [sim:flaky]")
    veo = await submit(pool, arq_redis, settings, acct.id, "waves [sim:seconds=2]", model="veo3_fast")
    rows = {r["id"]: r for r in await wait_terminal(pool, [ok, fail, refused, flaky], 30)}
    await wait_terminal(pool, [veo], 5)

    assert rows[ok]["status"] == "succeeded" and rows[ok]["charged"] == 4
    assert rows[ok]["result"]["urls"] and rows[ok]["result"]["urls"][0].startswith("https://")
    assert await entries(pool, ok) == ["hold", "capture"]

    assert rows[fail]["status"] == "failed" and rows[fail]["charged"] == 0
    assert rows[fail]["error_code"] == "provider_failed" and "500" in rows[fail]["error_message"]
    assert await entries(pool, fail) == ["hold", "release"]

    assert rows[refused]["status"] == "failed" and rows[refused]["error_code"] == "provider_rejected"
    assert "422" in rows[refused]["error_message"]
    assert await entries(pool, refused) == ["hold", "release"]

    assert rows[flaky]["status"] == "succeeded" and rows[flaky]["charged"] == 4

    assert (await tasks.get(pool, veo))["status"] == "succeeded"
    assert await account_state(pool, acct.id) == (100 - 4 - 4 - 80, 0)
    stats = sim_stats(sim.url)
    assert stats["creates"] == 4 and stats["rateLimited"] == 0  # the refused create is not counted
    await clean_audit(pool, [acct.id])
    # SIGTERM: in-flight steps end, then a clean exit.
    assert worker.stop() == 0
    assert "worker.stopped" in worker.output()


@pytest.mark.slow
async def test_deadline_refunds(
    procs: Processes,
    pool: asyncpg.Pool,
    arq_redis: ArqRedis,
    settings: Settings,
    make_account: MakeAccount,
    tmp_path: Path,
) -> None:
    pricing = tmp_path / "pricing.toml"
    pricing.write_text(
        settings.pricing_path.read_text().replace(
            'model = "google/nano-banana"\nkind = "image"\nfamily = "jobs"\ncost = 4\ndeadline_seconds = 300',
            'model = "google/nano-banana"\nkind = "image"\nfamily = "jobs"\ncost = 4\ndeadline_seconds = 4',
        )
    )
    short = dataclasses.replace(settings, pricing_path=pricing)
    assert _model(short, IMAGE).deadline_seconds == 4
    procs.sim()
    procs.worker(env={**WORKER_ENV, "CREDITQ_PRICING": str(pricing)})
    acct, _ = await make_account(credits=10, tier="pro")
    task_id = await submit(pool, arq_redis, short, acct.id, "slow [sim:seconds=100]")
    t0 = time.monotonic()
    (row,) = await wait_terminal(pool, [task_id], 15)
    assert time.monotonic() - t0 < 4 + 2 + 1  # the deadline plus the sweep interval, plus slack
    assert row["status"] == "failed" and row["error_code"] == "provider_timeout" and row["charged"] == 0
    assert await account_state(pool, acct.id) == (10, 0)
    await clean_audit(pool, [acct.id])


# --- exactly once -----------------------------------------------------------------------------------------------


@pytest.fixture
async def runtime(settings: Settings, arq_redis: ArqRedis, pool: asyncpg.Pool) -> AsyncIterator[Runtime]:
    # Its own queue prefix: its provider budget is not shared with the worker processes of other tests.
    own = dataclasses.replace(settings, kie_timeout=3, queue_name=f"{settings.queue_name}:inproc")
    rt = await open_runtime(own, arq_redis, pool)
    yield rt
    await close_runtime(rt)


async def _run_step(rt: Runtime, task_id: str, poked: bool = False) -> str | float:
    """One step as arq would run it: the end status, or the seconds it asked to be deferred by."""
    try:
        return await step.step({"rt": rt, "job_try": 1}, task_id, poked)
    except Retry as e:
        return (e.defer_score or 0) / 1000


async def test_step_twice_settles_once(
    procs: Processes, runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    sim = procs.sim("--time-scale", "0.01")
    rt = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, kie_base_url=sim.url))
    rt.provider = type(runtime.provider)(rt.settings, rt.http)
    acct, _ = await make_account(credits=10, tier="pro")
    received: list[dict[str, Any]] = []

    async def client_hook(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(h for h in head.decode().split("\r\n") if h.lower().startswith("content-length")).split(":")[1]
        )
        received.append(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(client_hook, "127.0.0.1", 0)
    hook_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    task_id = await submit(pool, None, settings, acct.id, "twice [sim:seconds=1]", callback_url=hook_url, enqueue=False)

    # Two concurrent first steps: exactly one creates (the other waits, or adopts the noted provider task).
    await asyncio.gather(_run_step(rt, task_id), _run_step(rt, task_id))
    row = await tasks.get(pool, task_id)
    assert row["status"] in ("running", "succeeded") and row["submit_attempts"] == 1
    assert sim_stats(sim.url)["creates"] == 1

    # The provider finished; two concurrent polls (a poke and the task's own job) both see success.
    await asyncio.sleep(0.1)
    ends = await asyncio.gather(_run_step(rt, task_id, True), _run_step(rt, task_id, True))
    assert list(ends) == ["succeeded", "succeeded"]
    # And once more, late, as a re-run after a crash would: a first try, so it takes the create fast path
    # (token, then claim), finds the task ended and gives its create token back.
    assert await _run_step(rt, task_id) == "succeeded"
    assert await entries(pool, task_id) == ["hold", "capture"]
    assert await account_state(pool, acct.id) == (6, 0)
    assert sim_stats(sim.url)["creates"] == 1
    # One create was sent; the tokens of the steps that found nothing to create (the second first step, the
    # late re-run) are not counted against the provider's limit.
    assert (await rt.keys.first.budget.usage())["create"][0] == 1
    await clean_audit(pool, [acct.id])
    # One end, one webhook in the outbox (written with the settlement); delivered, it carries the task view.
    (delivery,) = await outbox.for_task(pool, task_id)
    assert delivery["type"] == "job.succeeded" and delivery["status"] == "pending"
    rt.settings = dataclasses.replace(rt.settings, allow_private_callbacks=True)
    assert await deliveries.attempt(rt, delivery["id"]) == ("delivered", None)
    assert await deliveries.attempt(rt, delivery["id"]) == ("delivered", None)  # a re-run sends nothing more
    server.close()
    assert len(received) == 1
    assert received[0]["type"] == "job.succeeded"
    view = received[0]["data"]
    assert view["taskId"] == task_id and view["status"] == "succeeded"
    assert view["charged"] == 4 and view["result"]["urls"]


async def test_interrupted_create_is_never_repeated(
    procs: Processes, runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """A create claimed and never recorded (the worker died mid-call) is not sent again: with a noted provider
    id the task resumes; without one (and without callbacks) it fails submit_interrupted and is refunded."""
    sim = procs.sim("--time-scale", "0.01")
    rt = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, kie_base_url=sim.url))
    rt.provider = type(runtime.provider)(rt.settings, rt.http)
    acct, _ = await make_account(credits=10, tier="pro")
    lost = await submit(pool, None, settings, acct.id, "lost [sim:seconds=1]", enqueue=False)
    noted = await submit(pool, None, settings, acct.id, "noted [sim:seconds=1]", enqueue=False)
    for t in (lost, noted):
        assert await tasks.claim_submit(pool, t) is not None
    # The "crashed" worker had created `noted` at the provider and noted its id before dying.
    ptid = await rt.provider.create(rt.model(await tasks.get(pool, noted)), {"prompt": "noted [sim:seconds=1]"}, None)
    from shared.provider import note_provider_task

    await note_provider_task(rt.redis, rt.settings, noted, ptid)

    # While the intent may still be in flight, nothing happens.
    assert isinstance(await _run_step(rt, lost), float)
    assert (await tasks.get(pool, lost))["status"] == "queued"
    # The noted one is proven by the provider's echo and resumes; it already finished there.
    await asyncio.sleep(0.1)
    assert await _run_step(rt, noted) == "succeeded"
    # The other, once its intent is stale, fails and is refunded.
    await pool.execute("UPDATE tasks SET submit_started_at = now() - interval '1 minute' WHERE id = $1", lost)
    assert await _run_step(rt, lost) == "failed"
    row = await tasks.get(pool, lost)
    assert row["error_code"] == "submit_interrupted" and row["charged"] == 0
    assert sim_stats(sim.url)["creates"] == 1
    assert await account_state(pool, acct.id) == (6, 0)
    await clean_audit(pool, [acct.id])


async def test_interrupted_create_with_callbacks_waits_for_proof(
    procs: Processes, runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """With callbacks, an interrupted create waits: a provider id noted from a callback is believed only if the
    provider's echo of the request names our task in its callback URL."""
    sim = procs.sim("--time-scale", "0.01")
    cb = dataclasses.replace(runtime.settings, kie_base_url=sim.url, public_url="http://127.0.0.1:9")
    rt = dataclasses.replace(runtime, settings=cb)
    rt.provider = type(runtime.provider)(cb, rt.http)
    acct, _ = await make_account(credits=10, tier="pro")
    ours = await submit(pool, None, settings, acct.id, "ours [sim:seconds=1]", enqueue=False)
    assert await tasks.claim_submit(pool, ours) is not None
    await pool.execute("UPDATE tasks SET submit_started_at = now() - interval '1 minute' WHERE id = $1", ours)
    model = rt.model(await tasks.get(pool, ours))
    other = await rt.provider.create(model, {"prompt": "ours [sim:seconds=1]"}, f"{cb.public_url}/cb?task=task_x")
    mine = await rt.provider.create(model, {"prompt": "ours [sim:seconds=1]"}, f"{cb.public_url}/cb?task={ours}")
    await asyncio.sleep(0.1)

    from shared.provider import note_provider_task

    # Nothing noted: wait for the callback (30-60 s), money untouched.
    delay = await _run_step(rt, ours)
    assert isinstance(delay, float) and 30 <= delay <= 61
    # A note naming a provider task made for someone else is rejected.
    await note_provider_task(rt.redis, cb, ours, other)
    assert isinstance(await _run_step(rt, ours, True), float)
    assert (await tasks.get(pool, ours))["status"] == "queued"
    # The right one is proven and settles.
    await note_provider_task(rt.redis, cb, ours, mine)
    assert await _run_step(rt, ours, True) == "succeeded"
    assert (await tasks.get(pool, ours))["provider_task_id"] == mine
    assert await account_state(pool, acct.id) == (6, 0)
    await clean_audit(pool, [acct.id])


# --- the provider's limits --------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_45_tasks_stay_inside_provider_limits(
    procs: Processes, pool: asyncpg.Pool, arq_redis: ArqRedis, settings: Settings, make_account: MakeAccount
) -> None:
    sim = procs.sim("--time-scale", "0.5")
    procs.worker(env=WORKER_ENV)
    procs.worker(env=WORKER_ENV)
    acct, _ = await make_account(credits=1000, tier="pro_plus")
    ids = await asyncio.gather(
        *(submit(pool, arq_redis, settings, acct.id, f"n{i} [sim:seconds=4]") for i in range(45))
    )
    rows = await wait_terminal(pool, ids, 60)
    assert [r["status"] for r in rows] == ["succeeded"] * 45
    stats = sim_stats(sim.url)
    assert stats["rateLimited"] == 0
    assert stats["creates"] == 45
    prompts = [t["prompt"] for t in stats["tasks"].values()]
    assert len(set(prompts)) == 45  # no creditq task was created twice
    assert {r["provider_task_id"] for r in rows} == set(stats["tasks"])
    assert await account_state(pool, acct.id) == (1000 - 45 * 4, 0)
    await clean_audit(pool, [acct.id])


# --- the provider runs out of credits ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_out_of_credits_holds_then_resumes(
    procs: Processes, pool: asyncpg.Pool, arq_redis: ArqRedis, settings: Settings, make_account: MakeAccount
) -> None:
    sim = procs.sim("--time-scale", "0.1", "--credits", "0")
    procs.worker(env=WORKER_ENV)
    acct, _ = await make_account(credits=100, tier="pro")
    ids = [await submit(pool, arq_redis, settings, acct.id, f"broke {i} [sim:seconds=1]") for i in range(3)]
    circuit = Circuit(arq_redis, settings)
    deadline = time.monotonic() + 10
    while not await circuit.is_open():
        assert time.monotonic() < deadline, "the circuit never opened"
        await asyncio.sleep(0.2)
    await asyncio.sleep(3)
    rows = await pool.fetch("SELECT status FROM tasks WHERE id = ANY($1)", ids)
    assert [r["status"] for r in rows] == ["queued"] * 3
    assert await account_state(pool, acct.id) == (100, 12)  # still held, nothing charged or refunded
    assert sim_stats(sim.url)["creates"] == 0

    httpx.post(sim.url + "/__sim/credits", json={"credits": 100})
    rows = await wait_terminal(pool, ids, 25)
    assert [r["status"] for r in rows] == ["succeeded"] * 3
    assert not await circuit.is_open()
    assert await account_state(pool, acct.id) == (88, 0)
    await clean_audit(pool, [acct.id])


# --- callbacks: polling is only a safety net ----------------------------------------------------------------------


def _api_available() -> bool:
    try:
        import api.server  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _api_available(), reason="the API (api/) is not there yet: no webhook to call back")
async def test_callbacks_need_few_queries(
    procs: Processes, pool: asyncpg.Pool, arq_redis: ArqRedis, settings: Settings, make_account: MakeAccount
) -> None:
    sim = procs.sim("--time-scale", "0.2")
    port = free_port()
    public = {"CREDITQ_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    procs.api(env=public, port=port)
    procs.worker(env={**WORKER_ENV, **public})
    acct, _ = await make_account(credits=1000, tier="pro")
    cb = dataclasses.replace(settings, public_url=public["CREDITQ_PUBLIC_URL"])
    ids = [await submit(pool, arq_redis, cb, acct.id, f"video {i} [sim:seconds=30]", model=VIDEO) for i in range(3)]
    rows = await wait_terminal(pool, ids, 30)
    assert [r["status"] for r in rows] == ["succeeded"] * 3
    stats = sim_stats(sim.url)
    assert stats["callbacksSent"] >= 3
    for t in stats["tasks"].values():
        assert t["queries"] <= 3, t  # 30 s of video, polled every 2-10 s, would be 6+
    # The poke that settled each task took the task's deferred safety-net job off the queue: no arq job is left
    # to look at a settled task.
    step_jobs = [redis_keys.step_job_id(i) for i in ids]
    for _ in range(50):
        left = [j for j in step_jobs if await arq_redis.zscore(settings.queue_name, j) is not None]
        if not left:
            break
        await asyncio.sleep(0.1)
    assert left == []
    assert not await arq_redis.exists(*(job_key_prefix + j for j in step_jobs))
    await clean_audit(pool, [acct.id])


# --- pure parts and the edges -------------------------------------------------------------------------------------


def test_schedule_without_callbacks() -> None:
    rnd = random.Random(7)
    for _ in range(200):
        assert 2.0 <= schedule.first_check(False, 120, rnd) <= 3.0
        assert 2.0 <= schedule.next_check(10, False, rnd) <= 3.0
        assert 5.0 <= schedule.next_check(60, False, rnd) <= 10.0
        assert 15.0 <= schedule.next_check(600, False, rnd) <= 30.0
    # Jitter: tasks submitted together do not poll together.
    assert len({round(schedule.next_check(10, False, rnd), 3) for _ in range(20)}) > 15


def test_schedule_with_callbacks() -> None:
    rnd = random.Random(7)
    for _ in range(200):
        assert 120.0 <= schedule.first_check(True, 120, rnd) <= 132.0
        assert 2.0 <= schedule.first_check(True, 0.5, rnd) <= 2.2
        assert 30.0 <= schedule.next_check(10, True, rnd) <= 60.0
        assert 30.0 <= schedule.next_check(1000, True, rnd) <= 60.0


def test_schedule_stretches_with_running_tasks() -> None:
    """One round of polls of every running task fits in half the provider's query budget."""
    rnd = random.Random(7)
    for _ in range(200):
        # 10,000 running, 10 queries/s, half of them for polls: a round takes 2,000 s.
        assert 2000.0 <= schedule.next_check(1000, True, rnd, running=10_000, query_limit=10) <= 3000.0
        assert 2000.0 <= schedule.next_check(10, False, rnd, running=10_000, query_limit=10) <= 3000.0
        # A few running tasks change nothing.
        assert 2.0 <= schedule.next_check(10, False, rnd, running=5, query_limit=10) <= 3.0


async def test_last_look_at_the_deadline(
    procs: Processes, runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """At the deadline a running task gets one last status query: one that succeeded since its last poll is
    captured, not refunded unseen; one still pending is refunded (provider_timeout)."""
    sim = procs.sim("--time-scale", "0.01")
    rt = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, kie_base_url=sim.url))
    rt.provider = type(runtime.provider)(rt.settings, rt.http)
    acct, _ = await make_account(credits=10, tier="pro")
    done = await submit(pool, None, settings, acct.id, "done [sim:seconds=1]", enqueue=False)
    slow = await submit(pool, None, settings, acct.id, "slow [sim:seconds=100000]", enqueue=False)
    for task_id in (done, slow):
        await _run_step(rt, task_id)
        assert (await tasks.get(pool, task_id))["status"] == "running"
    await asyncio.sleep(0.1)  # the provider has finished `done` (1 s x 0.01)
    await pool.execute("UPDATE tasks SET deadline_at = now() - interval '1 second' WHERE id = ANY($1)", [done, slow])
    assert await _run_step(rt, done) == "succeeded"
    assert await _run_step(rt, slow) == "failed"
    assert (await tasks.get(pool, slow))["error_code"] == "provider_timeout"
    assert await entries(pool, done) == ["hold", "capture"]
    assert await entries(pool, slow) == ["hold", "release"]
    assert await account_state(pool, acct.id) == (6, 0)
    await clean_audit(pool, [acct.id])


async def test_sweep_and_retried_last_look_capture_a_success(
    procs: Processes, runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """Found by the soak (docs/SOAK.md): a task whose callback was lost and which the sweep reached past its
    deadline before its own step was refunded although the provider had succeeded; so was one whose single last
    look met a transient error. The sweep now takes the last look too, and a transient error is tried again
    within the grace (half the sweep interval)."""
    sim = procs.sim("--time-scale", "0.01")
    rt = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, kie_base_url=sim.url))
    rt.provider = type(runtime.provider)(rt.settings, rt.http)
    acct, _ = await make_account(credits=12, tier="pro")
    swept = await submit(pool, None, settings, acct.id, "swept [sim:seconds=1]", enqueue=False)
    flaky = await submit(pool, None, settings, acct.id, "flaky [sim:seconds=1] [sim:flaky]", enqueue=False)
    late = await submit(pool, None, settings, acct.id, "late [sim:seconds=1] [sim:flaky]", enqueue=False)
    for task_id in (swept, flaky, late):
        await _run_step(rt, task_id)
        assert (await tasks.get(pool, task_id))["status"] == "running"
    await asyncio.sleep(0.1)  # the provider has finished both (1 s x 0.01)
    # The sweep reaches `swept` past its deadline: it asks the provider, and captures.
    await pool.execute("UPDATE tasks SET deadline_at = now() - interval '0.1 second' WHERE id = $1", swept)
    await sweeper.sweep(rt)
    assert (await tasks.get(pool, swept))["status"] == "succeeded"
    # `flaky`: its next status query (the 2nd) answers HTTP 500. The last look is tried again, not refunded.
    async with httpx.AsyncClient() as http:
        for task_id in (flaky, late):  # one status query each, so that the next one is the 2nd
            provider_id = (await tasks.get(pool, task_id))["provider_task_id"]
            first = await http.get(
                f"{sim.url}/api/v1/jobs/recordInfo",
                params={"taskId": provider_id},
                headers={"Authorization": f"Bearer {rt.settings.kie_api_key}"},
            )
            assert first.status_code == 200
    await pool.execute("UPDATE tasks SET deadline_at = now() - interval '0.1 second' WHERE id = $1", flaky)
    again = await _run_step(rt, flaky)
    assert isinstance(again, float)
    assert 0 < again <= step.last_look_grace(rt.settings.sweep_seconds)
    assert (await tasks.get(pool, flaky))["status"] == "running"
    assert await _run_step(rt, flaky) == "succeeded"
    # `late` is past the grace when the sweep reaches it: its look meets the 500, one more look at once gets through.
    await pool.execute("UPDATE tasks SET deadline_at = now() - interval '1 minute' WHERE id = $1", late)
    await sweeper.sweep(rt)
    assert (await tasks.get(pool, late))["status"] == "succeeded"
    for task_id in (swept, flaky, late):
        assert await entries(pool, task_id) == ["hold", "capture"]
    assert await account_state(pool, acct.id) == (0, 0)
    await clean_audit(pool, [acct.id])


async def test_last_look_waits_longer_for_a_query_token_before_a_refund(
    procs: Processes, runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """Found by the soak (seed 7, 10 min): workers started again after every one was killed found their tasks
    past the deadline and the provider's query budget taken by the others; the last looks got no token within
    1 s and a success was refunded. Past the grace the final look now waits up to FINAL_LOOK_TOKEN_WAIT."""
    sim = procs.sim("--time-scale", "0.01")
    rt = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, kie_base_url=sim.url))
    rt.provider = type(runtime.provider)(rt.settings, rt.http)
    acct, _ = await make_account(credits=4, tier="pro")
    task_id = await submit(pool, None, settings, acct.id, "starved [sim:seconds=1]", enqueue=False)
    await _run_step(rt, task_id)
    assert (await tasks.get(pool, task_id))["status"] == "running"
    await asyncio.sleep(0.1)  # the provider has finished it
    await pool.execute("UPDATE tasks SET deadline_at = now() - interval '1 minute' WHERE id = $1", task_id)
    key = rt.keys.by_id((await tasks.get(pool, task_id))["provider_key"])

    # Other workers' queries in flight take every slot of the query budget; an entry in flight frees its slot by
    # itself after KIE_TIMEOUT (3 s here), longer than a step's usual 1 s wait for a token.
    await asyncio.sleep(1.1)  # the queries of the tests before have left the 1 s window
    for _ in range(rt.settings.kie_query_limit):
        assert await key.budget.try_acquire("query", key.budget.new_token()) == 0
    started = time.monotonic()
    await sweeper.sweep(rt)
    assert (await tasks.get(pool, task_id))["status"] == "succeeded"
    assert time.monotonic() - started >= 2.0  # it waited for a slot
    assert await entries(pool, task_id) == ["hold", "capture"]
    await clean_audit(pool, [acct.id])


def test_backoff_and_deadline_bound() -> None:
    rnd = random.Random(7)
    assert [round(schedule.backoff(n, rnd=random.Random(0)) * 2) >= 2 ** (n - 1) for n in (1, 2, 3)] == [True] * 3
    for n in range(1, 40):
        d = schedule.backoff(n, base=1.0, cap=60.0, rnd=rnd)
        assert min(60.0, 2.0 ** (n - 1)) / 2 <= d <= min(60.0, 2.0 ** (n - 1))
    assert schedule.bounded(30.0, 5.0) == 5.5  # looked at again just after the deadline, where it settles
    assert schedule.bounded(3.0, 100.0) == 3.0
    assert schedule.bounded(3.0, -10.0) == 0.1


async def test_postgres_down_retries_and_keeps_the_task(
    settings: Settings, arq_redis: ArqRedis, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    from shared import db

    acct, _ = await make_account(credits=10, tier="pro")
    task_id = await submit(pool, None, settings, acct.id, "pg down", enqueue=False)
    dead = await db.create_pool(settings, max_size=1)
    await dead.close()  # every use now fails as a lost connection would
    rt = await open_runtime(settings, arq_redis, dead)
    try:
        delays = [await _run_step(rt, task_id) for _ in range(3)]
    finally:
        await close_runtime(rt)
    assert all(isinstance(d, float) and 0.4 <= d <= 4.0 for d in delays), delays  # backoff, growing
    row = await tasks.get(pool, task_id)
    assert row["status"] == "queued" and row["submit_started_at"] is None
    assert await account_state(pool, acct.id) == (10, 4)
    # Leave nothing live for the workers of later tests to pick up.
    await tasks.cancel(pool, task_id, acct.id)


@pytest.mark.parametrize(
    ("var", "value", "says"),
    [
        ("REDIS_URL", "redis://127.0.0.1:1/0", "REDIS_URL"),
        ("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/x", "DATABASE_URL"),
    ],
)
def test_unreachable_at_start_waits_one_line_per_attempt(procs: Processes, var: str, value: str, says: str) -> None:
    """README: workers retry. A worker started while Redis or Postgres is down waits with backoff, logging one
    line per attempt that names the variable, instead of exiting (tests/test_startup.py sees it resume)."""
    w = procs.worker(env={var: value})
    deadline = time.monotonic() + 15
    while w.output().count('"worker.waiting"') < 2:
        assert w.popen.poll() is None, w.output()
        assert time.monotonic() < deadline, w.output()
        time.sleep(0.2)
    waits = [json.loads(x) for x in w.output().splitlines() if '"worker.waiting"' in x]
    assert all(says in x["error"] for x in waits), waits
    assert "Traceback" not in w.output()
