"""The submit path: ``POST /v1/jobs`` throughput and p50/p99 latency, against pgbench running the same SQL.

Cells: {spread over the bench accounts, one hot account} x {1, 16, 64 concurrent clients} x {API as 1 process,
as 2 processes (``creditq api --workers 2``)}. No worker runs: tasks stay queued. Accounts are of the ``bench``
tier (no tier limits) with huge credits, so that nothing is refused.

Order, so that a noisy machine hurts the API and its baseline alike: each repeat runs every cell with pgbench,
then every cell against a fresh 1-process API, then against a fresh 2-process API; the medians of the repeats are
reported. No API runs while pgbench does, so that idle pools do not take connections pgbench's 64 clients need
(``max_connections`` is 100, shared with whatever else uses this Postgres). Before each measurement the accounts
table is vacuumed, so that neither side inherits the other's dead row versions on the hot account.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.baselines import pgbench
from bench.env import Bench, CpuMeter, log
from bench.loadgen import Generators
from bench.stats import median, pct, ratio

BODY = {"model": "google/nano-banana", "input": {"prompt": "bench"}}


@dataclass(frozen=True)
class SubmitConfig:
    clients: tuple[int, ...] = (1, 16, 64)
    scenarios: tuple[str, ...] = ("spread", "hot")
    api_workers: tuple[int, ...] = (1, 2)
    seconds: float = 5.0
    warmup: float = 1.0
    reps: int = 3
    loadgen_procs: int = 1
    client: str = "raw"


async def _db_now(database_url: str) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT now()")
    finally:
        await conn.close()


async def _commits(database_url: str, since: Any) -> tuple[int, int]:
    """(tasks inserted since ``since``, distinct transactions that inserted them): rows written by one
    transaction share its xmin, so the second over the first is the commits per submit."""
    conn = await asyncpg.connect(database_url)
    try:
        r = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT xmin::text) AS tx FROM tasks WHERE created_at >= $1", since
        )
        return int(r["n"]), int(r["tx"])
    finally:
        await conn.close()


async def _vacuum(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("VACUUM accounts")
    finally:
        await conn.close()


def api_cell(
    bench: Bench,
    gens: Generators,
    api_url: str,
    api_pid: int,
    keys_file: Path,
    clients: int,
    hot: bool,
    cfg: SubmitConfig,
) -> dict[str, Any]:
    """One measurement of the API under ``clients`` closed-loop clients."""
    cmd = {
        "url": api_url,
        "path": "/v1/jobs",
        "keys_file": str(keys_file),
        "hot": hot,
        "body": BODY,
        "seconds": cfg.seconds,
        "warmup": cfg.warmup,
        "client": cfg.client,
    }
    since = asyncio.run(_db_now(bench.database_url))
    with CpuMeter({"api": [api_pid], "loadgen": gens.pids}) as cpu:
        r = gens.run(cmd, clients)
    inserted, transactions = asyncio.run(_commits(bench.database_url, since))
    lat = sorted(r["latencies_us"])
    ok = r["statuses"].get("202", 0)
    total = sum(r["statuses"].values())
    out = {
        "rps": round(ok / r["seconds"], 1),
        "p50_ms": pct(lat, 50) / 1000,
        "p99_ms": pct(lat, 99) / 1000,
        "requests": total,
        "non_202": {k: v for k, v in r["statuses"].items() if k != "202"},
        "conn_errors": r["errors"],
        "loadgen_cpu_share": round(r["cpu_seconds"] / (r["seconds"] + cfg.warmup), 3),
        # The meter also spans the warm-up, so divide by every answer, warm-up included.
        "api_cpu_us_per_request": round(cpu.seconds["api"] / max(1, r["responses"]) * 1e6),
        "cpu_shares": cpu.shares(),
        # Group commit: how many submits share a commit (1.0: one commit each).
        "commits_per_submit": round(transactions / inserted, 3) if inserted else None,
    }
    if r["sample_error"]:
        out["sample_error"] = r["sample_error"]
    if r["sample_body"]:
        out["sample_body"] = r["sample_body"]
    return out


def run(bench: Bench, cfg: SubmitConfig, keys_file: Path, accounts: int) -> dict[str, Any]:
    """All submit cells; returns {"cells": [...], "config": ...} with every repeat and the medians."""
    queue = bench.queue("submit")
    gens = Generators(cfg.loadgen_procs)
    raw: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    cells = [(scenario, c) for scenario in cfg.scenarios for c in cfg.clients]
    try:
        for rep in range(cfg.reps):
            for scenario, c in cells:
                asyncio.run(_vacuum(bench.database_url))
                pg = pgbench(bench, c, cfg.seconds, accounts, scenario == "hot")
                raw.setdefault(("pgbench", scenario, c), []).append(pg)
                log(f"submit rep {rep + 1}/{cfg.reps} {scenario:6} c={c:<3} pgbench: {pg.get('tps') or 0:8.1f}/s")
            for workers in cfg.api_workers:
                api = bench.api(queue, workers=workers)
                try:
                    for scenario, c in cells:
                        asyncio.run(_vacuum(bench.database_url))
                        cell = api_cell(bench, gens, api.url, api.pid, keys_file, c, scenario == "hot", cfg)
                        raw.setdefault((f"api{workers}", scenario, c), []).append(cell)
                        log(
                            f"submit rep {rep + 1}/{cfg.reps} {scenario:6} c={c:<3} api{workers}:    "
                            f"{cell['rps']:8.1f}/s p50 {cell['p50_ms']:7.2f} ms p99 {cell['p99_ms']:8.2f} ms, "
                            f"non-202 {cell['non_202'] or '-'}"
                        )
                        if not api.alive():
                            raise RuntimeError(f"the API died:\n{api.output()}")
                finally:
                    # Stopped between passes: its idle pool would hold connections pgbench needs (max_connections).
                    bench.stop(api)
    finally:
        gens.close()
    return {"config": cfg.__dict__, "cells": summarize(raw, cfg), "at": time.time()}


def summarize(raw: dict[tuple[str, str, int], list[dict[str, Any]]], cfg: SubmitConfig) -> list[dict[str, Any]]:
    """Medians per cell, and the API's ratio to the same cell's pgbench median."""
    cells = []
    for scenario in cfg.scenarios:
        for c in cfg.clients:
            pg = [r for r in raw.get(("pgbench", scenario, c), []) if r.get("tps") is not None]
            pg_tps = median([r["tps"] for r in pg])
            for workers in cfg.api_workers:
                reps = raw.get((f"api{workers}", scenario, c), [])
                if not reps:
                    continue
                rps = median([r["rps"] for r in reps])
                cells.append(
                    {
                        "scenario": scenario,
                        "clients": c,
                        "api_processes": workers,
                        "rps": rps,
                        "p50_ms": round(median([r["p50_ms"] for r in reps]), 2),
                        "p99_ms": round(median([r["p99_ms"] for r in reps]), 2),
                        "pgbench_tps": round(pg_tps, 1),
                        "pgbench_p50_ms": round(median([r["p50_ms"] for r in pg]), 2),
                        "pgbench_p99_ms": round(median([r["p99_ms"] for r in pg]), 2),
                        "ratio": ratio(rps, pg_tps),
                        "non_202": sum(sum(r["non_202"].values()) for r in reps),
                        "api_cpu_us_per_request": median([r["api_cpu_us_per_request"] for r in reps]),
                        "loadgen_cpu_share": median([r["loadgen_cpu_share"] for r in reps]),
                        "commits_per_submit": median(
                            [r["commits_per_submit"] for r in reps if r.get("commits_per_submit") is not None]
                        ),
                        "repeats": reps,
                        "pgbench_repeats": raw.get(("pgbench", scenario, c), []),
                    }
                )
    return cells
