"""Provider-callback pokes are bounded: however many callbacks arrive, a task gets at most one status check per
``CREDITQ_POKE_SECONDS`` window (later callbacks coalesce into one poke at the window's end), and its final state
is still reached within a window.

The gate is shown on the real Redis, then measured end to end: real simulator, API and worker processes, a flood
of callbacks for one task and for 20 tasks, and the provider's status queries counted by the simulator's
``/__sim/stats``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis

from shared import queue, redis_keys
from shared.config import Settings
from tests.apiserver import ADMIN, free_port
from tests.conftest import Processes

IMAGE = "google/nano-banana"


async def _poke_jobs(redis: aioredis.Redis, task_id: str) -> list[str]:
    keys = [k.decode() async for k in redis.scan_iter(f"arq:job:{redis_keys.poke_job_id(task_id)}*")]
    return sorted(keys)


async def test_a_flood_of_pokes_queues_two(settings: Settings, redis: aioredis.Redis) -> None:
    """1,000 callbacks within one window: one poke now, one scheduled at the window's end, the rest coalesce."""
    local = dataclasses.replace(settings, poke_seconds=5.0)
    arq = ArqRedis.from_url(local.redis_url)
    try:
        task_id = f"task_gate_{time.monotonic_ns()}"
        queued = [await queue.poke(arq, local, task_id) for _ in range(1000)]
        assert queued[:2] == [True, True] and not any(queued[2:])
        jobs = await _poke_jobs(redis, task_id)
        assert len(jobs) == 2, jobs
        scheduled = jobs[1].rsplit(":", 1)[1]
        score = await redis.zscore(local.queue_name, jobs[1].removeprefix("arq:job:"))
        assert score == int(scheduled)  # runs at the window's end
        assert 4.0 <= int(scheduled) / 1000 - time.time() <= 5.5
        # A callback after that scheduled poke ran but within its window schedules the next one; never two ahead.
        gate = redis_keys.poke_gate(local.queue_name, task_id)
        await redis.set(gate, int(time.time() * 1000) - 1000)  # as if the scheduled poke went a second ago
        assert await queue.poke(arq, local, task_id)
        assert not await queue.poke(arq, local, task_id)
        assert len(await _poke_jobs(redis, task_id)) == 3
    finally:
        await arq.aclose()


async def _sim_queries(client: httpx.AsyncClient, sim_url: str) -> dict[str, int]:
    tasks = (await client.get(f"{sim_url}/__sim/stats")).json()["tasks"]
    return {pid: int(t["queries"]) for pid, t in tasks.items()}


async def _flood(
    client: httpx.AsyncClient, url: str, params: dict[str, str], until: float, per_second: float | None
) -> int:
    """POST callbacks until ``until`` (monotonic): as fast as answers come, or ``per_second``. Returns how many
    were answered 200."""
    ok = 0
    while time.monotonic() < until:
        started = time.monotonic()
        r = await client.post(url, params=params, json={"code": 200, "data": {"state": "success"}})
        ok += r.status_code == 200
        if per_second is not None:
            await asyncio.sleep(max(0.0, 1 / per_second - (time.monotonic() - started)))
    return ok


@pytest.mark.slow
async def test_a_callback_flood_costs_a_few_status_queries(procs: Processes, pool: asyncpg.Pool) -> None:
    window = 8.0
    flood_seconds = 24.0
    sim = procs.sim("--create-limit", "200", "--query-limit", "50")
    port = free_port()
    env = {
        "CREDITQ_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "CREDITQ_POKE_SECONDS": str(window),
        "KIE_CREATE_LIMIT": "200",
        "KIE_QUERY_LIMIT": "50",
    }
    api = procs.api(env=env, port=port)
    procs.worker(env=env)
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        created = await client.post("/v1/admin/accounts", json={"credits": 10_000, "tier": "pro_plus"}, headers=ADMIN)
        key = {"Authorization": f"Bearer {created.json()['apiKey']}"}

        async def submit(prompt: str) -> str:
            r = await client.post("/v1/jobs", json={"model": IMAGE, "input": {"prompt": prompt}}, headers=key)
            assert r.status_code == 202, r.text
            return str(r.json()["taskId"])

        # Pending for the whole test (no callback of the simulator's own): the flooded ones, and a control.
        long = "[sim:seconds=120] [sim:nocallback]"
        single = await submit(f"single {long}")
        group = [await submit(f"group {i} {long}") for i in range(20)]
        control = await submit(f"control {long}")
        # One that ends in the middle of the flood: its final state must still come within about a window.
        ending = await submit("ending [sim:seconds=10] [sim:nocallback]")
        ids = [single, *group, control, ending]

        rows: list[Any] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = await pool.fetch("SELECT id, provider_task_id, callback_token FROM tasks WHERE id = ANY($1)", ids)
            if len(rows) == len(ids) and all(r["provider_task_id"] for r in rows):
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail(f"not all tasks reached the provider: {rows}")
        info = {r["id"]: (r["provider_task_id"], r["callback_token"]) for r in rows}
        before = await _sim_queries(client, sim.url)

        until = time.monotonic() + flood_seconds
        hook = "/v1/webhooks/kie"
        floods = [
            *(_flood(client, hook, {"task": single, "token": info[single][1]}, until, None) for _ in range(4)),
            *(_flood(client, hook, {"task": t, "token": info[t][1]}, until, 10) for t in [*group, ending]),
        ]
        counts = await asyncio.gather(*floods)
        # The last scheduled pokes run up to a window after the flood; then their rechecks, if any.
        await asyncio.sleep(window + 3)
        after = await _sim_queries(client, sim.url)

    delta = {t: after[info[t][0]] - before.get(info[t][0], 0) for t in ids}
    single_callbacks = sum(counts[:4])
    group_callbacks = sum(counts[4:24])
    # Per task: one immediate poke (1 + rechecks queries), then at most one scheduled poke (1 query) per window
    # of the flood, and one more for the window the flood ends in; beyond that only its regular polls (as the
    # control task, poked never, shows).
    bound = 1 + queue.POKE_RECHECKS + math.ceil(flood_seconds / window) + 1 + delta[control]
    print(
        f"poke flood: window {window:g}s, {flood_seconds:g}s; single task: {single_callbacks} callbacks → "
        f"{delta[single]} status queries; 20 tasks: {group_callbacks} callbacks → "
        f"{sum(delta[t] for t in group)} status queries (max {max(delta[t] for t in group)} per task); "
        f"control (no callbacks): {delta[control]}; bound per task {bound}"
    )
    assert single_callbacks > 500
    assert group_callbacks > 20 * 10 * flood_seconds * 0.5
    assert delta[single] <= bound, delta
    assert all(delta[t] <= bound for t in group), delta
    ended = await pool.fetchrow("SELECT status, created_at, finished_at FROM tasks WHERE id = $1", ending)
    assert ended is not None and ended["status"] == "succeeded", ended
    took = (ended["finished_at"] - ended["created_at"]).total_seconds()
    assert took <= 10 + window + 6, took  # its generation (10 s) + at most a window + a little
