"""In flight: N video tasks waiting at the provider at once, carried by one worker process.

Tasks (``kling/v2-1-standard``, prompt ``[sim:seconds=120]``) are inserted with the submit SQL function and queued
with ``shared.queue.enqueue``; the worker creates them at the simulator (limits raised on both sides), and they
then wait at the provider. The simulator's ``--time-scale`` is chosen so that every task is still running when the
last one has been created, plus a waiting window: the creation rate is estimated from the settle benchmark of the
same run. Callbacks are on (CREDITQ_PUBLIC_URL is the API), the mode docs/ARCHITECTURE.md prescribes for many slow tasks.

Measured, from /proc (no psutil): the worker's RSS (sampled, and its VmHWM high-water mark), its CPU share while
all N wait (three equal windows, median), the provider queries it spends per task while they wait, and after the
provider finishes them, how fast the callbacks settle them and the queries per settled task (from
``/__sim/stats``). A run stops waiting for settlement after ``settle_timeout`` seconds and says how many settled;
when the provider would still run for longer than that it skips settlement (the settle benchmark measures it).

Queries while waiting count the safety-net polls (worker/schedule.py: first near the model's typical duration,
120 s for this model, then every 30-60 s) of tasks that wait longer than that, which happens when creating all N
takes longer than the typical duration.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.env import Bench, cpu_seconds, log, rss_bytes
from bench.settle import enqueue_at, insert_tasks, sim_stats, unlimited
from bench.stats import median
from shared.config import Settings

VIDEO = ("kling/v2-1-standard", "video", "jobs", 60, 1200.0)
SIM_SECONDS = 120


@dataclass(frozen=True)
class InflightConfig:
    tasks: int = 10_000
    wait_window: float = 30.0
    settle_timeout: float = 60.0
    create_rate_guess: float = 100.0


def vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def _counts(conn: asyncpg.Connection, ids: list[str]) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM tasks WHERE id = ANY($1) GROUP BY status", ids)
    return {r["status"]: int(r["n"]) for r in rows}


def run(bench: Bench, cfg: InflightConfig, accounts: int, create_rate: float | None) -> dict[str, Any]:
    rate = create_rate or cfg.create_rate_guess
    create_seconds = cfg.tasks / max(1.0, rate)
    in_flight_seconds = create_seconds * 1.5 + cfg.wait_window + 10
    scale = max(0.25, in_flight_seconds / SIM_SECONDS)
    log(
        f"inflight: {cfg.tasks} tasks; expecting ~{create_seconds:.0f}s of creates at ~{rate:.0f}/s, so the "
        f"provider runs each for {SIM_SECONDS * scale:.0f}s (--time-scale {scale:.2f})"
    )
    sim = bench.sim(
        "--create-limit", "0", "--query-limit", "0", "--credits", "1000000000", "--time-scale", f"{scale:.3f}"
    )
    q = bench.queue("inflight")
    api = bench.api(q, workers=1)
    extra = unlimited(sim.url, api.url)
    worker = bench.worker(q, extra)
    settings = Settings.from_env(bench.env(q, **extra), dotenv=False)
    try:
        return asyncio.run(_measure(bench, cfg, accounts, sim.url, worker.pid, settings, scale, sim))
    finally:
        bench.stop(worker)
        bench.stop(api)
        bench.stop(sim)


async def _measure(
    bench: Bench,
    cfg: InflightConfig,
    accounts: int,
    sim_url: str,
    pid: int,
    settings: Settings,
    scale: float,
    sim: Any,
) -> dict[str, Any]:
    ids = await insert_tasks(bench.database_url, cfg.tasks, f"bench video [sim:seconds={SIM_SECONDS}]", accounts, VIDEO)
    await asyncio.sleep(1.0)
    idle_rss = rss_bytes(pid)
    timeline: list[dict[str, Any]] = []
    conn = await asyncpg.connect(bench.database_url)
    try:
        t0 = time.time()
        await enqueue_at(settings, ids, [t0] * len(ids))
        provider_seconds = SIM_SECONDS * scale
        created_at: float | None = None
        stats_created: dict[str, Any] = {}
        # Creation: until no task is queued any more.
        while True:
            c = await _counts(conn, ids)
            now = time.time()
            timeline.append({"t": round(now - t0, 2), "rss": rss_bytes(pid), "cpu": cpu_seconds(pid), **c})
            if c.get("queued", 0) == 0:
                created_at = now
                stats_created = await asyncio.to_thread(sim_stats, sim)
                break
            if now - t0 > provider_seconds + 30:
                break
            await asyncio.sleep(0.5)
        running_peak = max(s.get("running", 0) for s in timeline)
        # Waiting: all created, none finished at the provider yet. Three equal windows.
        first_done_at = t0 + provider_seconds  # the earliest a task can finish at the simulator
        windows: list[dict[str, float]] = []
        if created_at is not None:
            usable = min(cfg.wait_window, first_done_at - created_at - 2)
            if usable >= 3:
                span = usable / 3
                for _ in range(3):
                    c0, w0 = cpu_seconds(pid), time.monotonic()
                    rss_max = 0
                    while time.monotonic() - w0 < span:
                        rss_max = max(rss_max, rss_bytes(pid))
                        await asyncio.sleep(min(0.5, span / 4))
                    c = await _counts(conn, ids)
                    cpu_share = (cpu_seconds(pid) - c0) / (time.monotonic() - w0)
                    windows.append(
                        {"cpu_share": round(cpu_share, 4), "rss_max": rss_max, "running": c.get("running", 0)}
                    )
                    timeline.append(
                        {"t": round(time.time() - t0, 2), "rss": rss_bytes(pid), "cpu": cpu_seconds(pid), **c}
                    )
        stats_waited = await asyncio.to_thread(sim_stats, sim)
        waited_seconds = time.time() - (created_at or time.time())
        # Settlement: the provider finishes them (callbacks), the worker settles; bounded by settle_timeout. When
        # the provider is still far from finishing (the time scale was chosen with room to spare), it is skipped:
        # the settle benchmark measures settlement, and waiting here would only add minutes to the run.
        wait_for = first_done_at - time.time()
        settle_measured = wait_for <= cfg.settle_timeout
        if settle_measured and wait_for > 0:
            await asyncio.sleep(wait_for)
        s0 = time.time()
        settled_first: float | None = None
        while settle_measured and time.time() - s0 < cfg.settle_timeout:
            c = await _counts(conn, ids)
            timeline.append({"t": round(time.time() - t0, 2), "rss": rss_bytes(pid), "cpu": cpu_seconds(pid), **c})
            done = c.get("succeeded", 0) + c.get("failed", 0)
            if done and settled_first is None:
                settled_first = time.time()
            if done >= cfg.tasks:
                break
            await asyncio.sleep(1.0)
        stats_end = await asyncio.to_thread(sim_stats, sim)
        final = await _counts(conn, ids)
        finished = await conn.fetch(
            "SELECT extract(epoch FROM finished_at)::float8 AS f FROM tasks WHERE id = ANY($1) AND finished_at IS NOT NULL",
            ids,
        )
    finally:
        await conn.close()
    settled = len(finished)
    fin = sorted(r["f"] for r in finished)
    settle_rate = (settled - 1) / (fin[-1] - fin[0]) if settled > 10 and fin[-1] > fin[0] else 0.0
    hwm = vm_hwm(pid)
    return {
        "tasks": cfg.tasks,
        "time_scale": round(scale, 3),
        "provider_seconds": round(provider_seconds, 1),
        "create_seconds": round((created_at or time.time()) - t0, 1),
        "create_rate": round(cfg.tasks / ((created_at or time.time()) - t0), 1),
        "all_in_flight_at_once": created_at is not None and len(windows) == 3,
        "running_peak": running_peak,
        "idle_rss_mb": round(idle_rss / 2**20, 1),
        "peak_rss_mb": round(max([hwm] + [int(s["rss"]) for s in timeline]) / 2**20, 1),
        "waiting_rss_mb": round(median([w["rss_max"] for w in windows]) / 2**20, 1) if windows else None,
        "waiting_cpu_share": median([w["cpu_share"] for w in windows]) if windows else None,
        "waiting_windows": windows,
        "queries_while_waiting_per_task": round(int(stats_waited.get("queries", 0)) / cfg.tasks, 3),
        "queries_during_creation": int(stats_created.get("queries", 0)),
        # Safety-net polls of tasks that have waited past the model's typical duration (see the module docstring).
        "queries_per_second_while_waiting": round(
            (int(stats_waited.get("queries", 0)) - int(stats_created.get("queries", 0))) / max(1.0, waited_seconds), 1
        )
        if windows
        else None,
        "settle_measured": settle_measured,
        "settled": settled if settle_measured else None,
        "settle_rate": round(settle_rate, 1) if settle_measured else None,
        "queries_per_settled_task": round(int(stats_end.get("queries", 0)) / max(1, settled), 2)
        if settle_measured and settled
        else None,
        "provider_stats": stats_end,
        "final_statuses": final,
        "timeline": timeline[::4],
    }
