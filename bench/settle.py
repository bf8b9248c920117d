"""The settle path: completions settled per second by one worker process when the provider answers at once.

The simulator runs every task for 0 s (``[sim:seconds=0]``) and limits nothing (``--create-limit 0
--query-limit 0``; the worker's own budget is raised to match with KIE_CREATE_LIMIT / KIE_QUERY_LIMIT). Tasks are
inserted with the submit SQL function and queued with ``shared.queue.enqueue``, all due at one instant T0, so the
API's submit path is not part of this measurement. Two modes, each with its own worker process:

- callbacks: CREDITQ_PUBLIC_URL points at a running API, so each task is create → simulator callback → API
  webhook → poke → status query → settle;
- polling: no callbacks, so each task is create → first poll 2-3 s later (worker/schedule.py) → settle.

Reported per mode: the steady rate (tasks settled per second between the 10th and 90th percentile of the
tasks' ``finished_at``), the wall rate (N / (last finished_at - T0)), the worker's CPU per task, provider calls per
task, and completion-to-settled latency: ``finished_at`` minus the simulator's ``completeTime`` of the task (read
back from ``recordInfo`` after the run). That latency is taken twice: under the burst (a queue of N tasks, so it is
mostly waiting), and at a paced load well under the worker's capacity (tasks due evenly over a few seconds), which
is what the callback-to-settled target (docs/ARCHITECTURE.md) is about.

The baseline is arq's own no-op job rate with creditq's worker settings (bench/baselines.py), in the same run.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis

from bench.baselines import arq_noop, worker_knobs
from bench.env import KIE_KEY, Bench, Proc, cpu_seconds, log
from bench.stats import median, pct, ratio, steady_rate
from shared import queue as cq_queue
from shared.config import Settings

MODEL = ("google/nano-banana", "image", "jobs", 4, 300.0)
RAISED_LIMIT = "1000000"


def unlimited(sim_url: str, public_url: str = "") -> dict[str, str]:
    """A worker's (and API's) settings against the simulator at ``sim_url`` with its own provider budget raised
    out of the way (the simulator limits nothing either); ``public_url``: callbacks to that API, else polling."""
    return {
        "KIE_BASE_URL": sim_url,
        "KIE_CREATE_LIMIT": RAISED_LIMIT,
        "KIE_QUERY_LIMIT": RAISED_LIMIT,
        "CREDITQ_PUBLIC_URL": public_url,
    }


@dataclass(frozen=True)
class SettleConfig:
    max_tasks: int = 3000  # a burst is sized to last ~burst_seconds at the warm-up's rate, within these bounds
    min_tasks: int = 200
    burst_seconds: float = 6.0
    reps: int = 3
    paced_share: float = 0.3  # the paced run offers this share of the measured burst rate
    paced_seconds: float = 5.0
    noop_jobs: int = 2000
    modes: tuple[str, ...] = ("callbacks", "polling")
    paced_modes: tuple[str, ...] = ("callbacks", "polling")  # where the paced latency run is made


async def insert_tasks(
    database_url: str, n: int, prompt: str, accounts: int, model: tuple[str, str, str, int, float] = MODEL
) -> list[str]:
    """``n`` tasks through ``cq_submit_batch`` (task + hold, as a submit does), on random bench accounts."""
    from bench.env import account_id

    name, kind, family, cost, deadline = model
    rnd = random.Random(n)
    ids = [f"task_bench{time.monotonic_ns():x}{i:08d}" for i in range(n)]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(
            "SELECT cq_submit_batch($1, $2::jsonb)",
            [
                (
                    account_id(rnd.randint(1, accounts)),
                    json.dumps(
                        [
                            {
                                "id": t,
                                "model": name,
                                "kind": kind,
                                "family": family,
                                "input": {"prompt": prompt},
                                "token": secrets.token_urlsafe(16),
                                "cost": cost,
                                "deadline": deadline,
                            }
                        ]
                    ),
                )
                for t in ids
            ],
        )
    finally:
        await conn.close()
    return ids


async def enqueue_at(settings: Settings, task_ids: list[str], due: list[float]) -> float:
    """Queue each task with ``shared.queue.enqueue``, due at epoch ``due[i]``. Returns when the last was queued."""
    arq = await cq_queue.connect(settings)
    try:
        for start in range(0, len(task_ids), 500):
            batch = range(start, min(len(task_ids), start + 500))
            now = time.time()
            await asyncio.gather(
                *(cq_queue.enqueue(arq, settings, task_ids[i], defer_by=max(0.0, due[i] - now)) for i in batch)
            )
    finally:
        await arq.aclose()
    return time.time()


async def wait_settled(database_url: str, task_ids: list[str], timeout: float) -> list[asyncpg.Record]:
    """Until every task is terminal (or ``timeout``); returns their rows (id, status, finished_at epoch, provider id)."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = await conn.fetchval(
                "SELECT count(*) FROM tasks WHERE id = ANY($1) AND status IN ('queued', 'running')", task_ids
            )
            if left == 0:
                break
            await asyncio.sleep(0.1)
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT id, status, extract(epoch FROM finished_at)::float8 AS finished, provider_task_id, error_code "
            "FROM tasks WHERE id = ANY($1)",
            task_ids,
        )
        return rows
    finally:
        await conn.close()


async def queue_drained(redis_url: str, queue_name: str, timeout: float) -> bool:
    """Until the arq queue has no job left (deferred safety-net checks included), or ``timeout``."""
    r = aioredis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await r.zcard(queue_name) == 0:
                return True
            await asyncio.sleep(0.2)
        return False
    finally:
        await r.aclose()


async def complete_times(sim_url: str, provider_ids: list[str]) -> dict[str, float]:
    """The simulator's ``completeTime`` (epoch seconds) of each provider task, from ``recordInfo``."""
    out: dict[str, float] = {}
    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=sim_url, headers={"Authorization": f"Bearer {KIE_KEY}"}) as client:

        async def one(pid: str) -> None:
            async with sem:
                r = await client.get("/api/v1/jobs/recordInfo", params={"taskId": pid})
                data = r.json().get("data") or {}
                if data.get("completeTime"):
                    out[pid] = float(data["completeTime"]) / 1000

        await asyncio.gather(*(one(p) for p in provider_ids))
    return out


async def round_trips(database_url: str, redis_url: str) -> tuple[int, int]:
    """(Redis commands the server has run, Postgres transactions committed in the bench database) so far: read
    before and after a batch, their difference over the tasks is what a settled task costs in round trips
    (Redis: every command of every client, the bench's own few included; a script counts once, as EVALSHA)."""
    r = aioredis.Redis.from_url(redis_url)
    try:
        stats = await r.info("commandstats")
    finally:
        await r.aclose()
    commands = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
    conn = await asyncpg.connect(database_url)
    try:
        xacts = int(await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))
    finally:
        await conn.close()
    return commands, xacts


def sim_stats(sim: Proc) -> dict[str, Any]:
    s = httpx.get(sim.url + "/__sim/stats", timeout=30).json()
    return {k: v for k, v in s.items() if k != "tasks"}


def _delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, int]:
    return {k: int(b[k]) - int(a.get(k, 0)) for k in b if isinstance(b[k], int | float)}


def one_batch(
    bench: Bench,
    sim: Proc,
    worker: Proc,
    api: Proc | None,
    settings: Settings,
    n: int,
    accounts: int,
    spread_seconds: float,
    latency_sample: int,
) -> dict[str, Any]:
    """Insert and queue ``n`` instant tasks (all due at T0, or evenly over ``spread_seconds``), wait until all are
    settled, and measure."""
    ids = asyncio.run(insert_tasks(bench.database_url, n, "bench [sim:seconds=0]", accounts))
    stats0 = sim_stats(sim)
    time.sleep(1.2)
    trips0 = asyncio.run(round_trips(bench.database_url, bench.redis_url))
    cpu0 = cpu_seconds(worker.pid)
    api_cpu0 = cpu_seconds(api.pid) if api else 0.0
    # The instant they become due is set last, so that the readings above do not eat into it (a paced run whose
    # first second is already due at enqueue is a burst; the wall rate counts from T0).
    t0 = time.time() + 0.5 + n / 4000
    due = [t0 + spread_seconds * i / n for i in range(n)]
    queued_by = asyncio.run(enqueue_at(settings, ids, due))
    rows = asyncio.run(wait_settled(bench.database_url, ids, timeout=120 + spread_seconds))
    cpu = cpu_seconds(worker.pid) - cpu0
    api_cpu = (cpu_seconds(api.pid) - api_cpu0) if api else 0.0
    time.sleep(1.2)  # Postgres backends publish their transaction counts within a second of going idle
    trips1 = asyncio.run(round_trips(bench.database_url, bench.redis_url))
    stats = _delta(stats0, sim_stats(sim))
    done = [r["finished"] for r in rows if r["finished"] is not None]
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    sample = [r for r in rows if r["provider_task_id"] and r["finished"] is not None]
    random.Random(0).shuffle(sample)
    sample = sample[:latency_sample]
    completes = asyncio.run(complete_times(sim.url, [r["provider_task_id"] for r in sample]))
    lat = sorted(
        (r["finished"] - completes[r["provider_task_id"]]) * 1000 for r in sample if r["provider_task_id"] in completes
    )
    errors: dict[str, int] = {}
    for r in rows:
        if r["error_code"]:
            errors[r["error_code"]] = errors.get(r["error_code"], 0) + 1
    return {
        "tasks": n,
        "settled": len(done),
        "statuses": statuses,
        "error_codes": errors,
        "rate": round(steady_rate(done), 1),
        "wall_rate": round(len(done) / (max(done) - t0), 1) if done else 0.0,
        "enqueue_late_s": round(max(0.0, queued_by - t0), 2),
        "worker_cpu_us_per_task": round(cpu / max(1, len(done)) * 1e6),
        "worker_cpu_share": round(cpu / max(0.001, (max(done) - t0) if done else 1), 3),
        "api_cpu_us_per_task": round(api_cpu / max(1, len(done)) * 1e6) if api else None,
        # The bench's own inserts, enqueues and reads are counted too: a few per task at most.
        "redis_commands_per_task": round((trips1[0] - trips0[0]) / max(1, n), 1),
        "pg_commits_per_task": round((trips1[1] - trips0[1]) / max(1, n), 1),
        "provider": stats,
        "queries_per_task": round(stats.get("queries", 0) / max(1, n), 2),
        "creates_per_task": round(stats.get("creates", 0) / max(1, n), 2),
        "complete_to_settled_p50_ms": round(pct(lat, 50), 1),
        "complete_to_settled_p99_ms": round(pct(lat, 99), 1),
        "latency_samples": len(lat),
    }


def run(bench: Bench, cfg: SettleConfig, accounts: int) -> dict[str, Any]:
    """The arq no-op baseline, then each mode: a warm-up batch (which sizes the bursts), ``reps`` bursts back to
    back (so a burst also carries the safety-net checks its predecessor's tasks left queued, as a steady state
    would), then ``reps`` paced runs at a fraction of the burst rate."""
    knobs = worker_knobs()
    noop = []
    for rep in range(cfg.reps):
        r = arq_noop(bench, cfg.noop_jobs, knobs)
        noop.append(r)
        log(f"settle baseline rep {rep + 1}/{cfg.reps}: arq no-op {r['rate']:.0f} jobs/s (wall {r['wall_rate']:.0f}/s)")
    noop_rate = median([r["rate"] for r in noop])

    sim = bench.sim("--create-limit", "0", "--query-limit", "0", "--credits", "1000000000")
    results: dict[str, Any] = {
        "config": cfg.__dict__,
        "worker_knobs": knobs,
        "arq_noop": {"rate": noop_rate, "wall_rate": median([r["wall_rate"] for r in noop]), "repeats": noop},
        "modes": {},
    }
    try:
        for mode in cfg.modes:
            q = bench.queue(f"settle-{mode}")
            api = bench.api(q, workers=1) if mode == "callbacks" else None
            extra = unlimited(sim.url, api.url if api else "")
            worker = bench.worker(q, extra)
            settings = Settings.from_env(bench.env(q, **extra), dotenv=False)
            try:
                warm = one_batch(bench, sim, worker, api, settings, cfg.min_tasks, accounts, 0.0, 0)
                n = int(min(cfg.max_tasks, max(cfg.min_tasks, warm["rate"] * cfg.burst_seconds)))
                bursts, paced = [], []
                for rep in range(cfg.reps):
                    b = one_batch(bench, sim, worker, api, settings, n, accounts, 0.0, 300)
                    bursts.append(b)
                    log(
                        f"settle {mode} burst rep {rep + 1}/{cfg.reps} ({n} tasks): {b['rate']:.0f} tasks/s "
                        f"(wall {b['wall_rate']:.0f}/s), worker {b['worker_cpu_us_per_task']} µs CPU/task, "
                        f"{b['redis_commands_per_task']} Redis commands and {b['pg_commits_per_task']} Postgres "
                        "commits per task, "
                        f"complete→settled p99 {b['complete_to_settled_p99_ms']:.0f} ms, {b['statuses']}"
                    )
                # The paced runs start from an empty queue (no safety-net checks of the bursts left).
                if mode in cfg.paced_modes:
                    asyncio.run(queue_drained(bench.redis_url, q, 15))
                paced_rate = max(2.0, round(cfg.paced_share * median([b["rate"] for b in bursts]), 1))
                n_paced = max(10, round(paced_rate * cfg.paced_seconds))
                if mode in cfg.paced_modes:
                    # "At a steady load": one paced run first, not counted, so that the measured ones find the
                    # system as that load leaves it rather than as the bursts did (their first run's p99 after
                    # the bursts was 1.5-4x the next ones' in a diagnostic run on a quiet machine).
                    one_batch(bench, sim, worker, api, settings, n_paced, accounts, cfg.paced_seconds, 0)
                for rep in range(cfg.reps if mode in cfg.paced_modes else 0):
                    p = one_batch(bench, sim, worker, api, settings, n_paced, accounts, cfg.paced_seconds, n_paced)
                    paced.append(p)
                    log(
                        f"settle {mode} paced {paced_rate:.0f}/s rep {rep + 1}/{cfg.reps}: complete→settled "
                        f"p50 {p['complete_to_settled_p50_ms']:.0f} ms p99 {p['complete_to_settled_p99_ms']:.0f} ms"
                    )
            finally:
                bench.stop(worker)
                if api:
                    bench.stop(api)
            rate = median([b["rate"] for b in bursts])
            results["modes"][mode] = {
                "rate": rate,
                "wall_rate": median([b["wall_rate"] for b in bursts]),
                "ratio": ratio(rate, noop_rate),
                "worker_cpu_us_per_task": median([b["worker_cpu_us_per_task"] for b in bursts]),
                "redis_commands_per_task": median([b["redis_commands_per_task"] for b in bursts]),
                "pg_commits_per_task": median([b["pg_commits_per_task"] for b in bursts]),
                "queries_per_task": median([b["queries_per_task"] for b in bursts]),
                "creates_per_task": median([b["creates_per_task"] for b in bursts]),
                "burst_complete_to_settled_p50_ms": median([b["complete_to_settled_p50_ms"] for b in bursts]),
                "burst_complete_to_settled_p99_ms": median([b["complete_to_settled_p99_ms"] for b in bursts]),
                "paced_rate": paced_rate,
                "burst_tasks": n,
                "paced_complete_to_settled_p50_ms": median([p["complete_to_settled_p50_ms"] for p in paced])
                if paced
                else None,
                "paced_complete_to_settled_p99_ms": median([p["complete_to_settled_p99_ms"] for p in paced])
                if paced
                else None,
                "bursts": bursts,
                "paced": paced,
            }
    finally:
        bench.stop(sim)
    return results
