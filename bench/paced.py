"""Callback-to-settled at a steady load, on its own: paced runs back to back, optionally after bursts.

    python -m bench.paced [--rate 40] [--seconds 5] [--runs 4] [--bursts 0] [--burst-tasks 600]

One ``creditq worker`` with callbacks on (``CREDITQ_PUBLIC_URL`` → one ``creditq api``), a simulator that finishes
every task at once and limits nothing. Each run offers ``rate`` x ``seconds`` image tasks evenly over ``seconds``
(``bench.settle``'s paced run) and prints the percentiles of complete → settled (the task's ``finished_at`` minus
the simulator's ``completeTime``) over every task. ``--bursts N`` queues N bursts of ``--burst-tasks`` tasks at once
before the paced runs, as ``make bench`` does before its own paced runs. Uses the benchmark's own database
(``CREDITQ_BENCH_DB``) and Redis database (``CREDITQ_BENCH_REDIS_DB``); every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.env import Bench, create_accounts, log
from bench.settle import complete_times, enqueue_at, insert_tasks, unlimited, wait_settled
from bench.stats import pct
from shared.config import Settings

ACCOUNTS = 1000


def one_run(bench: Bench, settings: Settings, sim_url: str, n: int, spread: float) -> tuple[list[float], list[str]]:
    """Queue ``n`` instant tasks over ``spread`` seconds (0: at once), wait until settled: complete → settled of
    each settled task (ms, sorted), and the ids of those not settled within two minutes."""
    ids = asyncio.run(insert_tasks(bench.database_url, n, "bench [sim:seconds=0]", ACCOUNTS))
    t0 = time.time() + 1.0
    asyncio.run(enqueue_at(settings, ids, [t0 + spread * i / n for i in range(n)]))
    rows = asyncio.run(wait_settled(bench.database_url, ids, timeout=120 + spread))
    done = [r for r in rows if r["provider_task_id"] and r["finished"] is not None]
    late = [r["id"] for r in rows if r["finished"] is None]
    completes = asyncio.run(complete_times(sim_url, [r["provider_task_id"] for r in done]))
    ms = [(r["finished"] - completes[r["provider_task_id"]]) * 1000 for r in done if r["provider_task_id"] in completes]
    return sorted(ms), late


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.paced", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=40.0, help="tasks offered per second in a paced run")
    p.add_argument("--seconds", type=float, default=5.0, help="length of a paced run")
    p.add_argument("--runs", type=int, default=4, help="paced runs, back to back")
    p.add_argument("--bursts", type=int, default=0, help="bursts queued at once before the paced runs")
    p.add_argument("--burst-tasks", type=int, default=600, help="tasks per burst")
    p.add_argument("--keep-tmp", action="store_true", help="keep the processes' logs (the path is printed)")
    args = p.parse_args()
    with Bench(quick=True, keep_tmp=args.keep_tmp) as bench:
        bench.setup()
        asyncio.run(create_accounts(bench.database_url, ACCOUNTS))
        sim = bench.sim("--create-limit", "0", "--query-limit", "0", "--credits", "1000000000")
        q = bench.queue("paced")
        api = bench.api(q, workers=1)
        extra = unlimited(sim.url, api.url)
        bench.worker(q, extra)
        settings = Settings.from_env(bench.env(q, **extra), dotenv=False)
        runs = [("burst", args.burst_tasks, 0.0)] * args.bursts
        runs += [("paced", max(10, round(args.rate * args.seconds)), args.seconds)] * args.runs
        for i, (kind, n, spread) in enumerate(runs, 1):
            ms, late = one_run(bench, settings, sim.url, n, spread)
            log(
                f"run {i} {kind} ({n} tasks): complete→settled p50 {pct(ms, 50):.0f} ms, p90 {pct(ms, 90):.0f}, "
                f"p99 {pct(ms, 99):.0f}, max {ms[-1] if ms else 0:.0f} ms"
                + (f"; NOT SETTLED within 2 min: {len(late)} ({', '.join(late[:3])})" if late else "")
            )
        if args.keep_tmp:
            log(f"logs kept in {bench.tmp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
