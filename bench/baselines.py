"""The baselines every ratio is taken against, measured in the same run:

- ``pgbench``: the SQL one submit runs (``SELECT * FROM cq_submit_batch(...)`` with one request: task insert +
  hold, one transaction), at the same number of clients, with a random account out of the bench accounts or the hot one.
- arq's own no-op jobs per second: N jobs that do nothing, run by an arq ``Worker`` in burst mode with the same
  ``max_jobs`` / ``poll_delay`` / ``keep_result`` as creditq's worker, in a separate process
  (``python -m bench.baselines arq-noop ...``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.env import Bench, log
from bench.stats import pct, steady_rate

PGBENCH_SCRIPT = """\
\\set a random(1, {accounts})
SELECT * FROM cq_submit_batch('acct_' || lpad(to_hex(:a::int), 32, '0'), jsonb_build_array(jsonb_build_object(\
'id', cq_new_id('task'), 'model', 'google/nano-banana', 'kind', 'image', 'family', 'jobs', \
'input', '{{"prompt": "bench"}}'::jsonb, 'token', md5(random()::text), 'cost', 4, 'deadline', 300)));
"""
# The hot account is account 1 (the load generator's first key).
PGBENCH_HOT_SCRIPT = PGBENCH_SCRIPT.replace("random(1, {accounts})", "1")


def pgbench(
    bench: Bench, clients: int, seconds: float, accounts: int, hot: bool, mode: str = "prepared"
) -> dict[str, Any]:
    """One pgbench run of the submit SQL. Returns tps, p50/p99 latency (from the per-transaction log) and the
    counts. ``-M prepared``: the API's driver (asyncpg) prepares its statements too, so this is the fair floor."""
    script = bench.tmp / ("pgbench-hot.sql" if hot else "pgbench-spread.sql")
    script.write_text((PGBENCH_HOT_SCRIPT if hot else PGBENCH_SCRIPT).format(accounts=accounts))
    logdir = bench.tmp / f"pgbench-log-{time.monotonic_ns()}"
    logdir.mkdir()
    args = [
        "pgbench",
        "-n",
        "-c",
        str(clients),
        "-j",
        str(min(2, clients)),
        "-T",
        str(max(1, math.ceil(seconds))),
        "-M",
        mode,
        "-f",
        str(script),
        "-l",
        f"--log-prefix={logdir}/tx",
        bench.database_url,
    ]
    for attempt in range(8):
        out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=seconds + 60)
        if out.returncode == 0:
            break
        # Postgres is shared with whatever else runs on the machine: max_connections may be taken for a moment.
        if "too many clients" not in out.stderr or attempt == 7:
            log(f"pgbench failed ({out.returncode}): {out.stderr.strip()[-500:]}")
            return {"tps": None, "error": out.stderr.strip()[-500:], "mode": mode}
        for f in logdir.iterdir():
            f.unlink()
        time.sleep(4)
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    lat: list[int] = []
    for f in logdir.iterdir():
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                lat.append(int(parts[2]))
    lat.sort()
    return {
        "tps": float(m.group(1)) if m else 0.0,
        "transactions": len(lat),
        "failed": int(failed.group(1)) if failed else 0,
        "p50_ms": pct(lat, 50) / 1000,
        "p99_ms": pct(lat, 99) / 1000,
        "mode": mode,
    }


# --- arq no-op jobs ----------------------------------------------------------------------------------------------


def worker_knobs() -> dict[str, Any]:
    """The arq settings of creditq's worker that decide a job rate (``worker.settings.make``), so that the no-op
    baseline runs with the same concurrency, poll interval and result keeping."""
    from shared.config import Settings
    from worker.settings import make

    ws = make(Settings())
    return {
        "max_jobs": int(getattr(ws, "max_jobs", 10)),
        "poll_delay": float(getattr(ws, "poll_delay", 0.5)),
        "keep_result": getattr(ws, "keep_result", 3600),
        "queue_read_limit": getattr(ws, "queue_read_limit", None),
    }


def arq_noop(bench: Bench, jobs: int, knobs: dict[str, Any]) -> dict[str, Any]:
    """arq's own rate: ``jobs`` no-op jobs through a burst-mode Worker in a fresh process."""
    queue = bench.queue(f"noop:{time.monotonic_ns()}")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.baselines",
            "arq-noop",
            "--redis",
            bench.redis_url,
            "--queue",
            queue,
            "--jobs",
            str(jobs),
            "--knobs",
            json.dumps(knobs),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if out.returncode != 0:
        raise RuntimeError(f"arq no-op baseline failed: {out.stderr.strip()[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


async def _arq_noop_child(redis_url: str, queue: str, jobs: int, knobs: dict[str, Any]) -> dict[str, Any]:
    from arq import Worker
    from arq.connections import RedisSettings, create_pool
    from arq.worker import func

    done: list[float] = []

    async def noop(ctx: dict[str, Any]) -> None:
        done.append(time.perf_counter())

    pool = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=queue)
    try:
        for start in range(0, jobs, 500):
            await asyncio.gather(
                *(pool.enqueue_job("noop", _queue_name=queue) for _ in range(start, min(jobs, start + 500)))
            )
        worker = Worker(
            functions=[func(noop, name="noop")],
            queue_name=queue,
            redis_pool=pool,
            burst=True,
            handle_signals=False,
            max_jobs=int(knobs["max_jobs"]),
            poll_delay=float(knobs["poll_delay"]),
            keep_result=knobs["keep_result"],
            queue_read_limit=knobs.get("queue_read_limit"),
            log_results=False,
        )
        t0 = time.perf_counter()
        await worker.main()
        t1 = time.perf_counter()
        await pool.delete(queue)
    finally:
        await pool.aclose()
    return {
        "jobs": len(done),
        "rate": steady_rate(done),
        "wall_rate": len(done) / (max(done) - t0) if done else 0.0,
        "wall_seconds": round(t1 - t0, 3),
    }


def _child_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.baselines")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("arq-noop")
    a.add_argument("--redis", required=True)
    a.add_argument("--queue", required=True)
    a.add_argument("--jobs", type=int, required=True)
    a.add_argument("--knobs", required=True)
    args = p.parse_args(argv)
    # The same event loop as creditq's worker (arq's default: plain asyncio).
    result = asyncio.run(_arq_noop_child(args.redis, args.queue, args.jobs, json.loads(args.knobs)))
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "arq-noop":
        _child_main(sys.argv[1:])
    else:
        log("usage: python -m bench.baselines arq-noop --redis URL --queue Q --jobs N --knobs JSON")
        sys.exit(2)
