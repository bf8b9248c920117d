"""A provider that fails in every way at once, against one real worker process and the simulator.

Creates that never succeed (HTTP-200 code 500, code 455 maintenance, HTTP 429 with Retry-After) are retried with
backoff and jitter, bounded by the model's deadline, then failed ``provider_timeout`` and refunded. Status queries
that fail every second time (HTTP 503, 455, 429, a non-JSON body, an unknown state, a hung connection that the
client's ``KIE_TIMEOUT`` cuts, HTTP 500) are retried, and those tasks succeed. Afterwards every task is terminal
within its deadline plus the sweep interval, each hold is settled exactly once, the simulator saw no 429 of its
own limits (only the directed ones, which it does not count), and ``creditq audit`` is clean.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis

from shared.config import Settings
from tests.conftest import MakeAccount, Processes
from tests.test_faults import _settled_once
from tests.test_worker import IMAGE, arq_redis, sim_stats, submit, wait_terminal

__all__ = ["arq_redis"]  # the fixture, imported for this module's tests

SHORT_DEADLINE = 6  # seconds, IMAGE's deadline in this module's price list
SWEEP = 2  # CREDITQ_SWEEP_SECONDS of conftest's base_env
SLACK = 2
SLOW_IMAGE = "bytedance/seedream-v4-text-to-image"  # cost 6, its usual 300 s deadline: the query faults end well

# Faults at create: the provider never accepts these; the task is refunded at its deadline.
CREATE_FAULTS = {"create 500": "provider code 500", "create 455": "provider code 455", "create 429": "rate limited"}
# Faults on every second status query (the first is answered normally): these tasks succeed.
QUERY_FAULTS = {
    "query 503 [sim:query=503] [sim:seconds=6]": "provider code 503",
    "query 455 [sim:query=455] [sim:seconds=6]": "provider code 455",
    "query 429 [sim:query=429] [sim:seconds=6]": "rate limited",
    "garbage [sim:garbage] [sim:seconds=6]": "not the provider's envelope",
    "paused [sim:state=paused] [sim:seconds=10]": "unknown state 'paused'",
    "hang [sim:hang=3] [sim:seconds=6]": "no answer from the provider",
    "flaky [sim:flaky] [sim:seconds=6]": "provider code 500",
}


def _short_pricing(settings: Settings, path: Path) -> Settings:
    """Write a price list where IMAGE's deadline is SHORT_DEADLINE seconds; settings that use it."""
    block = 'model = "google/nano-banana"\nkind = "image"\nfamily = "jobs"\ncost = 4\ndeadline_seconds = '
    text = settings.pricing_path.read_text()
    assert block + "300" in text
    path.write_text(text.replace(block + "300", block + str(SHORT_DEADLINE)))
    return dataclasses.replace(settings, pricing_path=path)


def _log_events(output: str, event: str) -> list[dict[str, Any]]:
    """The worker's JSON log lines named ``event``."""
    found = []
    for line in output.splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                found.append(record)
    return found


@pytest.mark.slow
async def test_provider_faults_end_settled(
    procs: Processes,
    pool: asyncpg.Pool,
    arq_redis: ArqRedis,
    settings: Settings,
    make_account: MakeAccount,
    tmp_path: Path,
) -> None:
    short = _short_pricing(settings, tmp_path / "pricing.toml")
    sim = procs.sim()
    worker = procs.worker(env={"KIE_TIMEOUT": "2", "CREDITQ_PRICING": str(short.pricing_path)})
    acct, _ = await make_account(credits=1000, tier="pro_plus")

    succeeding = {
        await submit(pool, arq_redis, short, acct.id, prompt, model=SLOW_IMAGE): prompt for prompt in QUERY_FAULTS
    }
    refused = {
        await submit(pool, arq_redis, short, acct.id, f"{name} [sim:create={name.split()[1]}]"): name
        for name in CREATE_FAULTS
    }
    rows = {r["id"]: r for r in await wait_terminal(pool, [*succeeding, *refused], SHORT_DEADLINE + SWEEP + SLACK + 15)}

    for task_id, name in refused.items():
        r = rows[task_id]
        assert (r["status"], r["error_code"], r["charged"]) == ("failed", "provider_timeout", 0), (name, dict(r))
        assert r["model"] == IMAGE  # the short deadline
        took = (r["finished_at"] - r["created_at"]).total_seconds()
        assert took < SHORT_DEADLINE + SWEEP + SLACK, (name, took)
    for task_id, prompt in succeeding.items():
        r = rows[task_id]
        assert (r["status"], r["charged"]) == ("succeeded", 6), (prompt, dict(r))
        assert r["result"]["urls"], prompt
    await _settled_once(pool, [*succeeding, *refused])
    balance = await pool.fetchrow("SELECT balance, held FROM accounts WHERE id = $1", acct.id)
    assert balance is not None and (balance["balance"], balance["held"]) == (1000 - 6 * len(QUERY_FAULTS), 0)

    # Every fault was met, and each was taken as transient: retried, never settled on.
    output = worker.output()
    create_retries = _log_events(output, "task.create_retry")
    for task_id, name in refused.items():
        errors = [e["error"] for e in create_retries if e.get("task_id") == task_id]
        assert len(errors) >= 2 and all(CREATE_FAULTS[name] in e for e in errors), (name, errors)
    status_retries = _log_events(output, "task.status_retry")
    for task_id, prompt in succeeding.items():
        seen = [e for e in status_retries if e.get("task_id") == task_id]
        assert any(QUERY_FAULTS[prompt] in e["error"] for e in seen), (prompt, seen)
        # Never sooner than the provider asked (Retry-After: 1 on the 429s), jitter added.
        assert all(e["retry_in"] >= 1.0 for e in seen), (prompt, seen)

    # The simulator: each succeeding task created once, none of the refused ones; its own limits never hit.
    stats = sim_stats(sim.url)
    assert sorted(t["prompt"] for t in stats["tasks"].values()) == sorted(QUERY_FAULTS)
    assert stats["creates"] == len(QUERY_FAULTS)
    assert stats["rateLimited"] == 0

    audit = procs.start("audit", "audit", "--json")
    assert audit.popen.wait(30) == 0, audit.output()
    out = audit.output()
    report = json.loads(out[out.index("{\n") :])  # the report is indented JSON; log lines are one-line
    assert report == {"ok": True, "problems": []}
