"""One soak run: bring the world up, play the schedule (clients and nemesis at once), heal, resolve, drain,
observe, check, and tear everything down whatever happened.

Phases (each bounded, so the run always ends by itself):

1. **up**: Postgres, Redis, simulator, APIs, workers; the accounts.
2. **load**: the planned operations at their times, the faults one after another; crashed processes are started
   again (and counted) as a supervisor would.
3. **heal**: everything up again; operations still in flight end (each within its retry budget).
4. **resolve**: each keyed operation whose outcome is still unknown is sent once more with its key.
5. **drain**: until every task is terminal, at most the longest deadline + a few sweeps + a margin.
6. **observe + check**: the task list, accounts and entries through the API, the simulator's tasks,
   ``creditq audit --json``; :func:`soak.check.check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from soak.check import Final, ProviderTask, Task, Verdict, check
from soak.clients import ADMIN, REQUEST_TIMEOUT, RETRY_BUDGET, Clients
from soak.history import History, Log
from soak.nemesis import Nemesis
from soak.plan import make_plan
from soak.world import ROOT, SWEEP_SECONDS, Shape, World

RESOLVE_BUDGET = 30.0
CRASH_AFTER = 5.0  # seconds a process must have run for its exit to count as a crash
DRAIN_MARGIN = 30.0


@dataclass
class Config:
    """What one run does."""

    seed: int
    duration: float  # seconds of load
    shape: Shape
    run_dir: Path
    plan: list[dict[str, Any]] | None = None  # a replayed schedule (else drawn from the seed)
    keep_logs: bool = False  # keep the processes' logs even when the run passes


@dataclass
class Result:
    verdict: Verdict
    line: str
    log: Path


def _git_rev() -> str:
    done = subprocess.run(  # noqa: S603 - fixed arguments
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def run(cfg: Config) -> Result:
    """Run the soak described by ``cfg``; every process and temp directory is gone when it returns or raises."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    log = Log(cfg.run_dir / "soak.jsonl")
    plan = cfg.plan if cfg.plan is not None else make_plan(cfg.seed, cfg.duration, cfg.shape)
    log.write(
        "header", seed=cfg.seed, duration=cfg.duration, shape=cfg.shape.as_json(), rev=_git_rev(), replay=bool(cfg.plan)
    )
    for ev in plan:
        log.write("plan", event=ev)
    world = World(cfg.shape, cfg.run_dir)
    verdict: Verdict | None = None
    try:
        log.write("phase", phase="up")
        world.up()
        verdict = asyncio.run(_soak(cfg, world, log, plan))
    finally:
        world.close()
        passed = verdict is not None and verdict.ok
        if passed and not cfg.keep_logs:
            shutil.rmtree(world.proc_dir, ignore_errors=True)
    assert verdict is not None
    line = summary(cfg, plan, verdict, log.path)
    log.write("verdict", line=line, problems=verdict.problems, stats=dict(verdict.stats))
    log.close()
    return Result(verdict, line, log.path)


def summary(cfg: Config, plan: list[dict[str, Any]], verdict: Verdict, log_path: Path) -> str:
    """The one line a run prints."""
    ops = sum(1 for e in plan if e["kind"] == "op")
    faults = [e["fault"] for e in plan if e["kind"] == "fault"]
    s = verdict.stats
    return (
        f"soak seed={cfg.seed} seconds={cfg.duration:g} ops={ops} faults={len(faults)} "
        f"tasks={s['tasks']} captured={s['captured']} released={s['released']} orphans={s['orphans']} "
        f"crashes={s['crashes']} lost={verdict.count('lost')} doubled={verdict.count('doubled')} "
        f"wrong={verdict.count('wrong')} {'PASS' if verdict.ok else 'FAIL'} log={log_path}"
    )


async def _soak(cfg: Config, world: World, log: Log, plan: list[dict[str, Any]]) -> Verdict:
    history = History()
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(limits=limits) as http:
        clients = Clients(world, log, history, http)
        nemesis = Nemesis(world, log, http)
        for ev in plan:
            if ev["kind"] == "op" and ev["op"] == "account":
                await clients.create_account(ev)

        log.write("phase", phase="load")
        start = time.monotonic()
        ops: list[asyncio.Task[None]] = []
        crashes: list[str] = []
        stop = asyncio.Event()
        watchdog = asyncio.create_task(_watchdog(world, nemesis, log, crashes, stop))
        try:
            await asyncio.gather(_play_ops(clients, plan, start, ops), _play_faults(nemesis, plan, start))

            log.write("phase", phase="heal")
            log.write("healed", repaired=await nemesis.heal())
            await _settle_ops(ops, RETRY_BUDGET + REQUEST_TIMEOUT + 60)

            log.write("phase", phase="resolve")
            await _resolve(clients, history)

            log.write("phase", phase="drain")
            assert world.pg is not None
            bound = max(d for _, d in cfg.shape.deadlines) + 4 * SWEEP_SECONDS + DRAIN_MARGIN
            live = await _drain(world.pg.url(), bound)
            log.write("drained", live=live)
        finally:
            stop.set()
            await watchdog
            for t in ops:
                t.cancel()
            await asyncio.gather(*ops, return_exceptions=True)

        log.write("phase", phase="observe")
        final = await _observe(world, http, history)
    verdict = check(history, final)
    verdict.stats["crashes"] = len(crashes)
    verdict.stats["ops"] = len(history.outcomes)
    for status in ("ok", "fail", "info", "skipped"):
        verdict.stats["ops_" + status] = sum(1 for o in history.outcomes.values() if o.status == status)
    for cls, detail in verdict.problems:
        log.write("problem", cls=cls, detail=detail)
    return verdict


async def _play_ops(clients: Clients, plan: list[dict[str, Any]], start: float, ops: list[asyncio.Task[None]]) -> None:
    for ev in plan:
        if ev["kind"] != "op" or ev["op"] == "account":
            continue
        delay = start + float(ev["t"]) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        ops.append(asyncio.create_task(clients.run(ev)))


async def _play_faults(nemesis: Nemesis, plan: list[dict[str, Any]], start: float) -> None:
    for ev in plan:
        if ev["kind"] != "fault":
            continue
        delay = start + float(ev["t"]) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await nemesis.strike(ev)


async def _watchdog(world: World, nemesis: Nemesis, log: Log, crashes: list[str], stop: asyncio.Event) -> None:
    """Start again, once a second, any API or worker that died on its own (not killed by the nemesis)."""
    while not stop.is_set():
        for p in (*world.apis, *world.workers):
            if p.popen is not None and not p.alive() and p.name not in nemesis.held_down:
                code = p.popen.returncode
                # A process that exits within seconds of its start did not crash: it found a service still
                # down (the one-line error, exit 2) and is started again until it stays up.
                ran = time.monotonic() - p.started_at
                if ran > CRASH_AFTER:
                    crashes.append(p.name)
                log.write(
                    "crash" if ran > CRASH_AFTER else "restart_failed",
                    process=p.name,
                    exit=code,
                    ran=round(ran, 1),
                    tail=p.tail(1500),
                )
                p.unexpected_exits.append(int(code))
                p.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def _settle_ops(ops: list[asyncio.Task[None]], bound: float) -> None:
    if ops:
        await asyncio.wait(ops, timeout=bound)


async def _resolve(clients: Clients, history: History) -> None:
    """Send each keyed operation whose outcome is unknown once more (everything is up now)."""
    pending = [
        o
        for o in history.outcomes.values()
        if o.status == "info"
        and o.op.get("op") in ("submit", "transfer", "grant", "purchase", "refund")
        and _keyed(o.op)
    ]
    for out in pending:
        clients.log.write("resolve", op=out.id)
        out.status = "pending"
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_again(clients, out), RESOLVE_BUDGET + REQUEST_TIMEOUT)
        if out.status == "pending":
            out.status = "info"


def _keyed(op: dict[str, Any]) -> bool:
    return op.get("op") != "submit" or bool(op.get("key"))


async def _again(clients: Clients, out: Any) -> None:
    kind = out.op["op"]
    await getattr(clients, "op_" + kind)(out)


async def _drain(database_url: str, bound: float) -> int:
    """Wait until no task is live (or ``bound`` seconds pass); returns how many are still live."""
    deadline = time.monotonic() + bound
    live = -1
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(database_url, timeout=5)
            try:
                live = int(await conn.fetchval("SELECT count(*) FROM tasks WHERE status IN ('queued', 'running')"))
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError):
            live = -1
        if live == 0:
            return 0
        await asyncio.sleep(1.0)
    return live


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


async def _pages(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every item of a paginated list (``items``, ``nextCursor``)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10_000):
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        r = await http.get(url, headers=headers, params=params, timeout=30)
        r.raise_for_status()
        body = r.json()
        items.extend(body["items"])
        cursor = body.get("nextCursor")
        if not cursor:
            break
    return items


async def _observe(world: World, http: httpx.AsyncClient, history: History) -> Final:
    """Everything the checker needs, read after the drain: through the API as the clients would (task views,
    accounts, entries), the simulator's tasks, the audit; and from the task store only what no view shows (a
    task's prompt, deadline and provider task id)."""
    assert world.pg is not None
    assert world.sim is not None
    api = world.apis[0].url
    conn = await asyncpg.connect(world.pg.url(), timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT id, account_id, input->>'prompt' AS prompt, provider_task_id, "
            "extract(epoch FROM deadline_at)::float8 AS deadline FROM tasks"
        )
    finally:
        await conn.close()
    store = {r["id"]: r for r in rows}
    views: dict[str, dict[str, Any]] = {}
    accounts: dict[str, tuple[int, int]] = {}
    entries: dict[str, list[dict[str, Any]]] = {}
    for account_id, key in history.accounts.values():
        auth = {"Authorization": f"Bearer {key}"}
        for v in await _pages(http, f"{api}/v1/jobs", auth):
            views[v["taskId"]] = v
        got = await _pages(http, f"{api}/v1/account/transactions", auth)
        entries[account_id] = sorted(got, key=lambda e: int(e["id"]) if str(e["id"]).isdigit() else str(e["id"]))
        r = await http.get(f"{api}/v1/admin/accounts/{account_id}", headers=ADMIN, timeout=30)
        r.raise_for_status()
        accounts[account_id] = (int(r.json()["balance"]), int(r.json()["held"]))
    tasks: list[Task] = []
    for task_id, row in store.items():
        v = views.get(task_id, {})
        tasks.append(
            Task(
                id=task_id,
                account_id=row["account_id"],
                prompt=row["prompt"] or "",
                status=str(v.get("status", "missing from the client's list")),
                cost=int(v.get("cost", 0)),
                charged=int(v.get("charged", 0)),
                deadline=float(row["deadline"]),
                finished=_epoch(v.get("finishedAt")),
                provider_task_id=row["provider_task_id"],
                error_code=(v.get("error") or {}).get("code"),
            )
        )
    r = await http.get(f"{world.sim.url}/__sim/stats", timeout=30)
    r.raise_for_status()
    provider = [
        ProviderTask(pid, str(p.get("prompt", "")), str(p["state"]), float(p["finishedAt"]))
        for pid, p in r.json()["tasks"].items()
    ]
    code, out = await asyncio.to_thread(world.audit)
    problems: list[dict[str, Any]] = []
    try:
        problems = list(json.loads(out[out.index("{") :])["problems"])
    except (ValueError, KeyError):
        problems = [{"detail": out[-1000:]}]
    return Final(tasks, provider, accounts, entries, code == 0 and not problems, problems)


def main_line(result: Result) -> int:
    """Print the run's line; the exit status (0 pass, 1 fail)."""
    print(result.line, flush=True)
    if not result.verdict.ok:
        for cls, detail in result.verdict.problems[:30]:
            print(f"  {cls}: {detail}", file=sys.stderr)
    return 0 if result.verdict.ok else 1
