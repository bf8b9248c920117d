"""``python -m bench --profile``: where the time goes, sampled with py-spy (not a dependency: ``pip install
py-spy`` into the venv for local use) while the API takes the submit load and while the worker settles a burst.

Writes ``bench/profiles/<name>.folded`` (collapsed stacks: feed to flamegraph.pl or speedscope) and
``bench/profiles/<name>.txt`` (the top frames by own time and by inclusive time).
"""

from __future__ import annotations

import asyncio
import collections
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from bench.env import Bench, cpu_seconds, log
from bench.loadgen import Generators
from bench.settle import enqueue_at, insert_tasks, unlimited, wait_settled
from bench.submit import BODY
from shared.config import Settings

OUT = Path(__file__).resolve().parent / "profiles"
_LINE = re.compile(r":\d+\)")


def py_spy() -> str | None:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def summarize(folded: Path, top: int = 35) -> dict[str, Any]:
    """Own and inclusive shares of each function (line numbers folded away) in a collapsed-stack file."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    return {
        "samples": total,
        "own": [(round(v / total, 4), k) for k, v in own.most_common(top)] if total else [],
        "inclusive": [(round(v / total, 4), k) for k, v in incl.most_common(top * 2)] if total else [],
    }


def _write(name: str, folded: Path, extra: str) -> dict[str, Any]:
    OUT.mkdir(exist_ok=True)
    dest = OUT / f"{name}.folded"
    shutil.copyfile(folded, dest)
    s = summarize(dest)
    text = [f"# {name}: {s['samples']} samples. {extra}", "", "## own time (leaf frame)"]
    text += [f"{100 * share:5.1f}%  {frame}" for share, frame in s["own"]]
    text += ["", "## inclusive time"]
    text += [f"{100 * share:5.1f}%  {frame}" for share, frame in s["inclusive"]]
    (OUT / f"{name}.txt").write_text("\n".join(text) + "\n")
    return {"samples": s["samples"], "own": s["own"][:15], "inclusive": s["inclusive"][:40], "note": extra}


def _record(spy: str, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "250",
            "--nonblocking",
            "--format",
            "raw",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run(bench: Bench, keys_file: Path, accounts: int, seconds: float = 10.0) -> dict[str, Any]:
    spy = py_spy()
    if spy is None:
        log("profile: py-spy is not installed (pip install py-spy); skipped")
        return {"skipped": "py-spy not installed"}
    out: dict[str, Any] = {}

    # The API under 64 clients spread over the accounts.
    api = bench.api(bench.queue("profile-submit"), workers=1)
    gens = Generators(1)
    try:
        folded = bench.tmp / "api.folded"
        cmd = {"url": api.url, "keys_file": str(keys_file), "body": BODY, "seconds": seconds + 1, "warmup": 1.0}
        result: dict[str, Any] = {}
        t = threading.Thread(target=lambda: result.update(gens.run(cmd, 64)))
        t.start()
        c0 = cpu_seconds(api.pid)
        asyncio.run(asyncio.sleep(1.3))
        _record(spy, api.pid, seconds, folded).wait()
        cpu = cpu_seconds(api.pid) - c0
        t.join()
        n = sum(result.get("statuses", {}).values())
        out["api_submit"] = _write(
            "api-submit",
            folded,
            f"API (1 process) under 64 closed-loop clients, 1,000 accounts: {n / (seconds + 1):.0f} submits/s, "
            f"API CPU {cpu / (seconds + 1.3):.0%} of a core.",
        )
        log(f"profile: API written to {OUT}/api-submit.txt")
    finally:
        gens.close()
        bench.stop(api)

    # The worker settling a burst with callbacks.
    sim = bench.sim("--create-limit", "0", "--query-limit", "0", "--credits", "1000000000")
    q = bench.queue("profile-settle")
    api = bench.api(q, workers=1)
    extra = unlimited(sim.url, api.url)
    worker = bench.worker(q, extra)
    settings = Settings.from_env(bench.env(q, **extra), dotenv=False)
    try:
        ids = asyncio.run(insert_tasks(bench.database_url, 1500, "bench [sim:seconds=0]", accounts))
        folded = bench.tmp / "worker.folded"
        import time

        t0 = time.time() + 0.5
        # Long enough for the whole burst: the creates (all due at once) run first, the pokes queue behind them.
        worker_seconds = 2.5 * seconds
        rec = _record(spy, worker.pid, worker_seconds, folded)
        c0 = cpu_seconds(worker.pid)
        asyncio.run(enqueue_at(settings, ids, [t0] * len(ids)))
        rec.wait()
        cpu = cpu_seconds(worker.pid) - c0
        rows = asyncio.run(wait_settled(bench.database_url, ids, 120))
        done_in = [r for r in rows if r["finished"] is not None and r["finished"] <= t0 + worker_seconds]
        out["worker_settle"] = _write(
            "worker-settle",
            folded,
            f"worker (callbacks on) settling a burst of {len(ids)} instant tasks: {len(done_in)} settled in the "
            f"{worker_seconds:.0f} s sampled, worker CPU {cpu / worker_seconds:.0%} of a core.",
        )
        log(f"profile: worker written to {OUT}/worker-settle.txt")
    finally:
        bench.stop(worker)
        bench.stop(api)
        bench.stop(sim)
    return out
