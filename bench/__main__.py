"""``python -m bench`` (``make bench``): run the benchmarks, write bench/results.json, print the tables.

    python -m bench                  # everything, ~10 minutes
    python -m bench --quick          # fewer cells, shorter runs, ~2-3 minutes
    python -m bench --only submit    # one part (submit | settle | inflight | baseline | profile | variants);
                                     # results.json keeps the other parts of the last run
    python -m bench --only variants  # the fixes BENCHMARKS.md proposes, applied from outside, vs as shipped
    python -m bench --profile        # also profile the API and the worker under load with py-spy (if installed)

Needs Postgres (with pgbench) and Redis on this machine; uses its own database ``creditq_bench`` (dropped and
re-created) and Redis database 14 (flushed). Every process it starts is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from typing import Any

from bench import inflight, report, settle, submit
from bench.env import Bench, StartError, create_accounts, log, machine, retire_live_tasks

ACCOUNTS = 1000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="creditq benchmarks with same-run baselines")
    p.add_argument(
        "--quick", action="store_true", help="a ~2-3 minute run: 64 clients and 1 API process only, shorter runs"
    )
    p.add_argument(
        "--only",
        choices=["submit", "settle", "inflight", "baseline", "profile", "variants"],
        help="run one part only (profile and variants are never part of the default run)",
    )
    p.add_argument("--seconds", type=float, help="seconds per submit measurement (default 2.5, quick 2)")
    p.add_argument("--reps", type=int, help="repeats of each measurement (default 3; the median is reported)")
    p.add_argument("--loadgen-procs", type=int, default=1, help="load generator processes (default 1)")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load generator HTTP client")
    p.add_argument("--inflight-tasks", type=int, help="tasks in flight (default 10,000, quick 1,000)")
    p.add_argument("--profile", action="store_true", help="profile the API and the worker with py-spy under load")
    p.add_argument("--keep-tmp", action="store_true", help="keep the run's temporary directory (process logs)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if shutil.which("pgbench") is None and args.only in (None, "submit", "baseline"):
        print("bench: pgbench is not installed (Debian: apt-get install postgresql-client)", file=sys.stderr)
        return 2
    started = time.time()
    quick = args.quick
    reps = args.reps or 3
    sub_cfg = submit.SubmitConfig(
        clients=(64,) if quick else (1, 16, 64),
        api_workers=(1,) if quick else (1, 2),
        seconds=args.seconds or (2.0 if quick else 2.5),
        warmup=0.5,
        reps=reps,
        loadgen_procs=args.loadgen_procs,
        client=args.client,
    )
    set_cfg = settle.SettleConfig(
        reps=reps,
        burst_seconds=2.0 if quick else 6.0,
        paced_seconds=3.0 if quick else 5.0,
        noop_jobs=1000 if quick else 2000,
        max_tasks=1000 if quick else 3000,
        min_tasks=100 if quick else 200,
        paced_modes=("callbacks",),
        modes=("callbacks",) if quick else ("callbacks", "polling"),
    )
    inf_cfg = inflight.InflightConfig(
        tasks=args.inflight_tasks or (1000 if quick else 10_000),
        wait_window=6.0 if quick else 20.0,
        settle_timeout=15.0 if quick else 30.0,
    )
    results: dict[str, Any] = report.load() if args.only else {}
    try:
        with Bench(quick=quick, keep_tmp=args.keep_tmp) as bench:
            log(f"setting up database {bench.database_url} and Redis {bench.redis_url} (temp dir {bench.tmp})")
            bench.setup()
            keys = asyncio.run(create_accounts(bench.database_url, ACCOUNTS))
            keys_file = bench.tmp / "keys.json"
            keys_file.write_text(json.dumps(keys))
            # A partial run (--only) files its own facts under "runs" and leaves the full run's at the top.
            meta: dict[str, Any] = (
                results if args.only is None else results.setdefault("runs", {}).setdefault(args.only, {})
            )
            meta["machine"] = machine(bench.database_url, bench.redis_url)
            meta["quick"] = quick
            meta["command"] = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
            # Settle and in-flight first: the submit phase leaves tens of thousands of queued tasks that a later
            # phase's worker (its sweeper re-enqueues live tasks from Postgres) would otherwise have to retire.
            if args.only in (None, "settle"):
                _retire(bench)
                results["settle"] = settle.run(bench, set_cfg, ACCOUNTS)
                report.write(results)
            if args.only in (None, "inflight"):
                _retire(bench)
                rate = _create_rate(results)
                results["inflight"] = inflight.run(bench, inf_cfg, ACCOUNTS, rate)
                report.write(results)
            if args.only in (None, "submit"):
                results["submit"] = submit.run(bench, sub_cfg, keys_file, ACCOUNTS)
                report.write(results)
            if args.only == "baseline":
                results["baseline"] = _baselines_only(bench, sub_cfg, set_cfg)
            if args.only == "variants":
                from bench import variants

                _retire(bench)
                results["variants"] = variants.run(bench, keys_file, ACCOUNTS, reps=reps)
            if args.profile or args.only == "profile":
                _retire(bench)
                from bench import profile

                results["profiles"] = profile.run(bench, keys_file, ACCOUNTS)
            meta["took_seconds"] = round(time.time() - started, 1)
            meta["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            report.write(results)
            asyncio.run(bench.drop_database())
            asyncio.run(bench.flush_redis())
    except StartError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    print(report.render(results))
    log(f"done in {time.time() - started:.0f}s; wrote {report.RESULTS}")
    return 0


def _retire(bench: Bench) -> None:
    n = asyncio.run(retire_live_tasks(bench.database_url))
    if n:
        log(f"canceled {n:,} tasks left live by the previous phase (a worker's sweeper would pick them up)")


def _create_rate(results: dict[str, Any]) -> float | None:
    """Creates per second one worker manages, estimated from the settle run. A settled task is two steps, one of
    them the create, but with thousands of tasks waiting a create step costs more than in a short burst (measured:
    ~0.65 x the settle rate), so the estimate is on the low side: too long a provider time only costs waiting,
    too short a one means the first tasks finish before the last is created."""
    modes = results.get("settle", {}).get("modes", {})
    rates = [m["rate"] for m in modes.values() if m.get("rate")]
    return 0.6 * max(rates) if rates else None


def _baselines_only(bench: Bench, sub_cfg: submit.SubmitConfig, set_cfg: settle.SettleConfig) -> dict[str, Any]:
    from bench.baselines import arq_noop, pgbench, worker_knobs
    from bench.stats import median

    out: dict[str, Any] = {"pgbench": [], "arq_noop": {}}
    for scenario in sub_cfg.scenarios:
        for c in sub_cfg.clients:
            reps = [pgbench(bench, c, sub_cfg.seconds, ACCOUNTS, scenario == "hot") for _ in range(sub_cfg.reps)]
            tps = median([r["tps"] for r in reps])
            out["pgbench"].append({"scenario": scenario, "clients": c, "tps": tps, "repeats": reps})
            log(f"baseline pgbench {scenario} c={c}: {tps:.0f} tx/s")
    knobs = worker_knobs()
    reps_noop = [arq_noop(bench, set_cfg.noop_jobs, knobs) for _ in range(set_cfg.reps)]
    out["arq_noop"] = {"rate": median([r["rate"] for r in reps_noop]), "knobs": knobs, "repeats": reps_noop}
    log(f"baseline arq no-op: {out['arq_noop']['rate']:.0f} jobs/s")
    return out


if __name__ == "__main__":
    sys.exit(main())
