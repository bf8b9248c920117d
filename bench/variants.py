"""``python -m bench --only variants``: what the fixes proposed in BENCHMARKS.md would buy, measured by applying
each from outside the product (bench/launch.py) in the same run as the code as shipped. Not part of the default
run; its numbers are quoted in BENCHMARKS.md ("where the time goes").

- API: 64 clients over the 1,000 accounts and on the hot account, as shipped / without asyncpg's reset query on
  pool release / without the info log lines / on plain asyncio + h11 instead of uvloop + httptools.
- Worker: a settle burst (polling mode, instant tasks), as shipped / on uvloop / without the reset query / with
  sniffio importable / without the info log lines / all four.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.env import Bench, cpu_seconds, log
from bench.loadgen import Generators
from bench.settle import one_batch, unlimited
from bench.stats import median
from bench.submit import SubmitConfig, _vacuum, api_cell
from shared.config import Settings

# name → (bench/launch.py flags or None for the console script, extra environment)
Variant = tuple[list[str] | None, dict[str, str]]
QUIET = {"CREDITQ_LOG_LEVEL": "warning"}
API_VARIANTS: dict[str, Variant] = {
    "as shipped (uvloop + httptools)": (None, {}),
    "no pool reset query": (["--no-pool-reset"], {}),
    "log level warning (no info lines)": (None, QUIET),
    "asyncio + h11": (["--server", "asyncio-h11"], {}),
}
WORKER_VARIANTS: dict[str, Variant] = {
    "as shipped (asyncio)": (None, {}),
    "uvloop": (["--uvloop"], {}),
    "no pool reset query": (["--no-pool-reset"], {}),
    "sniffio importable": (["--sniffio-stub"], {}),
    "log level warning (no info lines)": (None, QUIET),
    "all four": (["--uvloop", "--no-pool-reset", "--sniffio-stub"], QUIET),
}


def run(
    bench: Bench, keys_file: Path, accounts: int, reps: int = 3, seconds: float = 3.0, tasks: int = 600
) -> dict[str, Any]:
    cfg = SubmitConfig(seconds=seconds)
    api_raw: dict[tuple[str, str], list[dict[str, Any]]] = {}
    gens = Generators(1)
    try:
        for rep in range(reps):
            for name, (launch, env) in API_VARIANTS.items():
                api = bench.api(bench.queue("variants"), workers=1, launch=launch, extra=env)
                try:
                    for scenario in ("spread", "hot"):
                        asyncio.run(_vacuum(bench.database_url))
                        cell = api_cell(bench, gens, api.url, api.pid, keys_file, 64, scenario == "hot", cfg)
                        api_raw.setdefault((name, scenario), []).append(cell)
                        log(
                            f"variants rep {rep + 1}/{reps} API {name:32} {scenario:6}: {cell['rps']:7.1f}/s p99 {cell['p99_ms']:7.1f} ms"
                        )
                finally:
                    bench.stop(api)
    finally:
        gens.close()
    api_out = [
        {
            "variant": name,
            "scenario": scenario,
            "rps": median([r["rps"] for r in rs]),
            "p99_ms": round(median([r["p99_ms"] for r in rs]), 1),
            "api_cpu_us_per_request": median([r["api_cpu_us_per_request"] for r in rs]),
            "repeats": rs,
        }
        for (name, scenario), rs in api_raw.items()
    ]

    sim = bench.sim("--create-limit", "0", "--query-limit", "0", "--credits", "1000000000")
    worker_raw: dict[str, list[dict[str, Any]]] = {}
    try:
        q = bench.queue("variants-settle")
        extra = unlimited(sim.url)
        settings = Settings.from_env(bench.env(q, **extra), dotenv=False)
        for rep in range(reps):
            for name, (launch, env) in WORKER_VARIANTS.items():
                worker = bench.worker(q, {**extra, **env}, launch=launch)
                try:
                    one_batch(bench, sim, worker, None, settings, 100, accounts, 0.0, 0)  # warm-up
                    c0 = cpu_seconds(worker.pid)
                    b = one_batch(bench, sim, worker, None, settings, tasks, accounts, 0.0, 0)
                    b["worker_cpu_total_s"] = round(cpu_seconds(worker.pid) - c0, 2)
                    worker_raw.setdefault(name, []).append(b)
                    log(
                        f"variants rep {rep + 1}/{reps} worker {name:22}: {b['rate']:6.1f} tasks/s, "
                        f"{b['worker_cpu_us_per_task']} µs CPU/task"
                    )
                finally:
                    bench.stop(worker)
    finally:
        bench.stop(sim)
    worker_out = [
        {
            "variant": name,
            "rate": median([b["rate"] for b in bs]),
            "worker_cpu_us_per_task": median([b["worker_cpu_us_per_task"] for b in bs]),
            "repeats": bs,
        }
        for name, bs in worker_raw.items()
    ]
    return {"api": api_out, "worker": worker_out}


def table(v: dict[str, Any]) -> str:
    lines = ["| API variant (64 clients) | accounts | submits/s | p99 ms | API CPU µs/req |", "|---|---|--:|--:|--:|"]
    for r in v.get("api", []):
        lines.append(
            f"| {r['variant']} | {'1,000 spread' if r['scenario'] == 'spread' else 'one hot'} | {r['rps']:,.1f} "
            f"| {r['p99_ms']:,.1f} | {r['api_cpu_us_per_request']:,.0f} |"
        )
    lines += ["", "| worker variant (polling, instant tasks) | settled/s | worker CPU µs/task |", "|---|--:|--:|"]
    for r in v.get("worker", []):
        lines.append(f"| {r['variant']} | {r['rate']:,.1f} | {r['worker_cpu_us_per_task']:,.0f} |")
    return "\n".join(lines)
