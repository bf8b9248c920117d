"""A burst of jobs against a provider that rate-limits in the body, with one provider key or several.

    python -m bench.burst [--tasks 60] [--seconds 5]

Each scenario gets a fresh queue prefix (so its own budgets in Redis), a strict simulator answering its limits with
HTTP 200 and body code 429 (``--rate-limit-style body``, no ``Retry-After``), and one ``creditq worker`` whose
budget per key matches the simulator's limits per key. ``--tasks`` image jobs (``[sim:seconds=S]``, polling, no
callbacks) are submitted at once; reported: the provider's 429s, failed tasks, status queries per task, creates per
key, and the time from the burst to the last task settled. Scenarios: one key at the provider's limits (20 creates
per 10 s, 10 queries per second); two keys each limited to half of that (the same capacity, spread); two keys each
at the full limits (twice the capacity); and one key whose creditq budget is set to twice what the provider takes,
so that the provider's body-code 429s (no ``Retry-After``) are what hold creditq back.

Uses the benchmark's own database (``CREDITQ_BENCH_DB``, dropped and re-created) and Redis database
(``CREDITQ_BENCH_REDIS_DB``, flushed); every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import structlog

from bench import report
from bench.env import Bench, account_id, create_accounts, log, retire_live_tasks
from shared import db
from shared import queue as cq_queue
from shared.config import Settings
from shared.ledger import tasks
from shared.pricing import load


@dataclass(frozen=True)
class Scenario:
    name: str
    keys: tuple[str, ...]
    create_limit: int  # per key, per 10 s, at the simulated provider
    query_limit: int  # per key, per second, at the simulated provider
    overbudget: float = 1.0  # creditq's own budget per key, as a multiple of the provider's limits


CREATE_WINDOW = 10.0  # seconds: the simulator's create window, and creditq's (KIE_CREATE_WINDOW's default)

SCENARIOS = (
    Scenario("one key, 20 creates/10 s, 10 queries/s", ("kie-a",), 20, 10),
    Scenario("two keys, each half: 10 creates/10 s, 5 queries/s", ("kie-a", "kie-b"), 10, 5),
    Scenario("two keys, each 20 creates/10 s, 10 queries/s", ("kie-a", "kie-b"), 20, 10),
    Scenario("one key, creditq's budget set 2x the provider's limits", ("kie-a",), 20, 10, overbudget=2.0),
)


async def _burst(bench: Bench, queue: str, n: int, seconds: float) -> tuple[list[str], float]:
    env = bench.env(queue)
    settings = Settings.from_env({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "CREDITQ_QUEUE")}, dotenv=False)
    model = load(bench.pricing_path).model("google/nano-banana")
    assert model is not None
    pool = await db.create_pool(settings, max_size=4)  # with creditq's JSON codecs
    arq = await cq_queue.connect(settings)
    try:
        started = time.monotonic()
        ids = []
        for i in range(n):
            sub = await tasks.submit(
                pool, account_id(1), model, {"prompt": f"burst {i} [sim:seconds={seconds}]"}, None, None, None
            )
            ids.append(str(sub.task["id"]))
        for t in ids:
            await cq_queue.enqueue(arq, settings, t)
        return ids, started
    finally:
        await arq.aclose()
        await pool.close()


async def _settled(bench: Bench, ids: list[str], started: float, timeout: float) -> tuple[list[Any], float]:
    conn = await asyncpg.connect(bench.database_url)
    try:
        while True:
            rows = await conn.fetch("SELECT status, error_code, provider_key, polls FROM tasks WHERE id = ANY($1)", ids)
            if all(r["status"] in tasks.TERMINAL for r in rows):
                return list(rows), time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"not all settled after {timeout} s")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def run_scenario(bench: Bench, sc: Scenario, n: int, seconds: float) -> dict[str, Any]:
    queue = bench.queue(f"burst{len(sc.keys)}x{sc.create_limit}x{sc.overbudget}")
    sim = bench.sim(
        "--strict",
        "--rate-limit-style",
        "body",
        "--create-limit",
        str(sc.create_limit),
        "--query-limit",
        str(sc.query_limit),
        "--api-key",
        ",".join(sc.keys),
    )
    worker = bench.worker(
        queue,
        {
            "KIE_BASE_URL": sim.url,
            "KIE_API_KEYS": ",".join(sc.keys),
            "KIE_CREATE_LIMIT": str(round(sc.create_limit * sc.overbudget)),
            "KIE_QUERY_LIMIT": str(round(sc.query_limit * sc.overbudget)),
        },
    )
    try:
        ids, started = asyncio.run(_burst(bench, queue, n, seconds))
        rows, wall = asyncio.run(_settled(bench, ids, started, timeout=600))
        stats = httpx.get(sim.url + "/__sim/stats").json()
    finally:
        bench.stop(worker)
        bench.stop(sim)
        asyncio.run(retire_live_tasks(bench.database_url))
    failed = [r for r in rows if r["status"] != "succeeded"]
    # The creates the provider accepted within one create window of the first: the capacity of the keys, which N
    # keys should multiply by N (the whole burst's time also holds the generation and the polls).
    created = sorted(float(t["createdAt"]) for t in stats["tasks"].values())
    return {
        "scenario": sc.name,
        "tasks": n,
        "succeeded": n - len(failed),
        "failed": len(failed),
        "provider429": stats["rateLimited"],
        "queriesPerTask": round(stats["queries"] / n, 2),
        "createsPerKey": {k: v["creates"] for k, v in sorted(stats["keys"].items())},
        "settleSeconds": round(wall, 1),
        "createLimit": sc.create_limit,
        "queryLimit": sc.query_limit,
        "overbudget": sc.overbudget,
        "createWindow": CREATE_WINDOW,
        "createsFirstWindow": sum(1 for t in created if t < created[0] + CREATE_WINDOW) if created else 0,
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=60)
    p.add_argument("--seconds", type=float, default=5.0, help="generation time of each simulated task")
    args = p.parse_args()
    # The submitting process's own log lines (a line per task) are not the benchmark's output.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results = []
    with Bench() as bench:
        bench.setup()
        asyncio.run(create_accounts(bench.database_url, 1))
        for sc in SCENARIOS:
            log(f"burst of {args.tasks}: {sc.name}")
            results.append(run_scenario(bench, sc, args.tasks, args.seconds))
            log(json.dumps(results[-1]))
    # Kept beside make bench's parts, for bench/report.py's targets (a full make bench starts results.json anew).
    saved = report.load()
    saved["burst"] = {
        "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tasks": args.tasks,
        "seconds": args.seconds,
        "scenarios": results,
    }
    report.write(saved)
    print(
        "| scenario | succeeded | failed | provider 429s | status queries per task | creates per key | first window "
        "| settled in |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        per_key = ", ".join(f"{k}: {v}" for k, v in r["createsPerKey"].items())
        print(
            f"| {r['scenario']} | {r['succeeded']} | {r['failed']} | {r['provider429']} | {r['queriesPerTask']} "
            f"| {per_key} | {r['createsFirstWindow']} | {r['settleSeconds']} s |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
