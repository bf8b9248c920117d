"""Faults on real processes: workers killed mid-run, Redis flushed or restarted mid-run. After each, every task is terminal,
each hold settled exactly once, no task created twice at the provider, and the audit finds nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis

from shared import queue
from shared.config import Settings
from soak.servers import REDIS_SERVER, RedisServer
from tests.conftest import MakeAccount, Proc, Processes
from tests.test_worker import WORKER_ENV, arq_redis, clean_audit, sim_stats, submit, wait_terminal

__all__ = ["arq_redis"]  # the fixture, imported for this module's tests


async def _settled_once(pool: asyncpg.Pool, task_ids: list[str]) -> None:
    rows = await pool.fetch(
        "SELECT t.id, t.status, array_agg(e.kind ORDER BY e.id) AS kinds FROM tasks t "
        "JOIN ledger_entries e ON e.task_id = t.id WHERE t.id = ANY($1) GROUP BY t.id, t.status",
        task_ids,
    )
    assert len(rows) == len(task_ids)
    for r in rows:
        expected = ["hold", "capture"] if r["status"] == "succeeded" else ["hold", "release"]
        assert list(r["kinds"]) == expected, (r["id"], r["status"], r["kinds"])


async def _started(proc: Proc, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while "worker.started" not in proc.output():
        assert time.monotonic() < deadline, proc.output()[-2000:]
        await asyncio.sleep(0.05)


def _created_once(url: str, prefix: str) -> None:
    stats = sim_stats(url)
    prompts = [t["prompt"] for t in stats["tasks"].values() if t["prompt"].startswith(prefix)]
    assert len(prompts) == len(set(prompts))  # never two provider tasks for one creditq task
    assert stats["rateLimited"] == 0


@pytest.mark.slow
async def test_workers_killed_mid_run(
    procs: Processes, pool: asyncpg.Pool, arq_redis: ArqRedis, settings: Settings, make_account: MakeAccount
) -> None:
    sim = procs.sim("--time-scale", "0.5")
    procs.worker(env=WORKER_ENV)  # the survivor
    victim = procs.worker(env=WORKER_ENV)
    acct, _ = await make_account(credits=1000, tier="pro_plus")
    ids = [await submit(pool, arq_redis, settings, acct.id, f"kill {i} [sim:seconds=6]") for i in range(24)]
    for _ in range(3):
        await _started(victim)
        await asyncio.sleep(random.uniform(0.5, 1.5))
        victim.kill()  # SIGKILL: no cleanup, arq's in-progress leases stay until they expire
        victim = procs.worker(env=WORKER_ENV)
    rows = await wait_terminal(pool, ids, 60)
    succeeded = sum(r["status"] == "succeeded" for r in rows)
    # A kill in the middle of a create may leave a task that nobody can prove was created: it is refunded.
    assert all(r["status"] == "succeeded" or r["error_code"] == "submit_interrupted" for r in rows), [
        (r["status"], r["error_code"]) for r in rows
    ]
    assert succeeded >= 20
    await _settled_once(pool, ids)
    _created_once(sim.url, "kill ")
    await clean_audit(pool, [acct.id])


@pytest.mark.slow
async def test_redis_flushed_mid_run(
    procs: Processes, pool: asyncpg.Pool, arq_redis: ArqRedis, settings: Settings, make_account: MakeAccount
) -> None:
    sim = procs.sim("--time-scale", "0.5")
    procs.worker(env=WORKER_ENV)
    acct, _ = await make_account(credits=1000, tier="pro_plus")
    ids = [await submit(pool, arq_redis, settings, acct.id, f"flush {i} [sim:seconds=4]") for i in range(12)]
    never_enqueued = await submit(pool, arq_redis, settings, acct.id, "flush lost [sim:seconds=1]", enqueue=False)
    await asyncio.sleep(1.0)
    r = aioredis.Redis.from_url(settings.redis_url)
    try:
        await r.flushdb()  # every queue entry, lease and budget log is gone; Postgres still knows everything
    finally:
        await r.aclose()
    t0 = time.monotonic()
    rows = await wait_terminal(pool, [*ids, never_enqueued], 30)
    assert [r["status"] for r in rows] == ["succeeded"] * 13
    assert time.monotonic() - t0 < 20
    await _settled_once(pool, [*ids, never_enqueued])
    _created_once(sim.url, "flush ")
    await clean_audit(pool, [acct.id])


@pytest.mark.slow
async def test_worker_outlives_a_redis_restart(
    procs: Processes, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """Found by the soak (docs/SOAK.md): a worker exited when Redis went away under arq's poll loop. Redis (a
    throwaway server of our own) is killed, so everything in it is lost, and started again 3 s later: the same
    worker process carries on, and every task ends, settled once, created once."""
    if not Path(REDIS_SERVER).is_file():
        pytest.skip(f"no {REDIS_SERVER} for a throwaway Redis")
    server = RedisServer.create()
    try:
        server.start()
        own = dataclasses.replace(settings, redis_url=server.url)
        sim = procs.sim("--time-scale", "0.5")
        worker = procs.worker(env={**WORKER_ENV, "REDIS_URL": server.url})
        await _started(worker)
        acct, _ = await make_account(credits=1000, tier="pro_plus")
        arq = await queue.connect(own)
        try:
            ids = [await submit(pool, arq, own, acct.id, f"restart {i} [sim:seconds=4]") for i in range(8)]
        finally:
            await arq.aclose()
        await asyncio.sleep(1.0)
        server.kill()
        await asyncio.sleep(3.0)
        assert worker.popen.poll() is None, worker.output()[-3000:]
        server.start()
        rows = await wait_terminal(pool, ids, 40)
        assert [r["status"] for r in rows] == ["succeeded"] * len(ids)
        assert worker.popen.poll() is None, worker.output()[-3000:]
        assert "worker.redis_unavailable" in worker.output()
        await _settled_once(pool, ids)
        _created_once(sim.url, "restart ")
        await clean_audit(pool, [acct.id])
    finally:
        server.destroy()
