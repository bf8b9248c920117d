"""The chaos soak (``soak/``, docs/SOAK.md): its schedule is a function of its seed, its checker catches each kind
of broken promise, and a short seeded run against real processes, real kills, a real Postgres stop and a real
FLUSHALL finds nothing lost, doubled or wrong.

The checker tests feed :func:`soak.check.check` a small consistent world (two accounts, three tasks) and then
break one thing at a time, each of which must be reported in its class.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from soak.check import Final, ProviderTask, Task, check
from soak.history import History, Outcome, read_log
from soak.plan import FAULT_WEIGHTS, make_plan
from soak.servers import REDIS_SERVER, postgres_tools
from soak.world import Shape

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0
A, B = "acct_a", "acct_b"


# --- the schedule -----------------------------------------------------------------------------------------------


def test_same_seed_same_schedule_and_every_fault_kind() -> None:
    shape = Shape()
    first, again, other = make_plan(42, 600, shape), make_plan(42, 600, shape), make_plan(43, 600, shape)
    assert first == again
    assert first != other
    assert [e["t"] for e in first] == sorted(e["t"] for e in first)
    kinds = {e["fault"] for e in first if e["kind"] == "fault"}
    assert kinds == {k for k, _ in FAULT_WEIGHTS}
    ops = {e["op"] for e in first if e["kind"] == "op"}
    assert {"submit", "repeat", "conflict", "cancel", "transfer", "grant", "purchase", "purchase_duplicate"} <= ops
    assert any(e.get("key") is None for e in first if e.get("op") == "submit")  # keyless submits too
    # Faults never overlap and all end within the run.
    faults = [e for e in first if e["kind"] == "fault"]
    for a, b in itertools.pairwise(faults):
        assert a["t"] + a["down"] < b["t"]
    assert faults[-1]["t"] + faults[-1]["down"] <= 600


def test_replay_reads_the_schedule_back(tmp_path: Path) -> None:
    plan = make_plan(7, 60, Shape())
    log = tmp_path / "soak.jsonl"
    header = {"type": "header", "seed": 7, "duration": 60, "shape": Shape().as_json()}
    log.write_text("\n".join([json.dumps(header), *(json.dumps({"type": "plan", "event": e}) for e in plan)]) + "\n")
    got_header, got_plan = read_log(log)
    assert got_plan == plan
    assert Shape.from_json(got_header["shape"]) == Shape()


# --- the checker ------------------------------------------------------------------------------------------------


def _world() -> tuple[History, Final]:
    """Two accounts (100 and 50), a grant of 10 to A, a transfer of 5 from A to B; A's submit 10 succeeded (cost
    4), B's submit 11 failed at the provider (cost 6), A's submit 12 was canceled (cost 4)."""
    h = History()
    h.accounts = {0: (A, "key_a"), 1: (B, "key_b")}
    ops: list[dict[str, Any]] = [
        {"id": 0, "op": "account", "credits": 100},
        {"id": 1, "op": "account", "credits": 50},
        {"id": 2, "op": "grant", "account": 0, "amount": 10, "key": "g"},
        {"id": 3, "op": "transfer", "account": 0, "to": 1, "amount": 5, "key": "t"},
        {"id": 10, "op": "submit", "account": 0, "key": "k10"},
        {"id": 11, "op": "submit", "account": 1, "key": None},
        {"id": 12, "op": "submit", "account": 0, "key": "k12"},
        {"id": 13, "op": "repeat", "of": 10},
        {"id": 14, "op": "cancel", "of": 12, "task": "task_12"},
    ]
    bodies = {
        10: {"taskId": "task_10"},
        11: {"taskId": "task_11"},
        12: {"taskId": "task_12"},
        13: {"taskId": "task_10"},
    }
    for op in ops:
        oid = int(op["id"])
        code = {"submit": 202, "repeat": 202, "cancel": 200}.get(str(op["op"]), 201)
        out = Outcome(op, status="ok", code=code, body=bodies.get(oid, {"taskId": f"task_{op.get('of')}"}))
        out.answers.append({"code": code, "id": bodies.get(oid, {}).get("taskId")})
        h.outcomes[oid] = out
    h.views = [(NOW, "task_10", "queued", 0), (NOW + 5, "task_10", "succeeded", 4), (NOW + 6, "task_12", "canceled", 0)]
    tasks = [
        Task("task_10", A, "soak#10 [sim:seconds=2]", "succeeded", 4, 4, NOW + 20, NOW + 4, "p10", None),
        Task("task_11", B, "soak#11 [sim:fail=500]", "failed", 6, 0, NOW + 20, NOW + 4, "p11", "provider_failed"),
        Task("task_12", A, "soak#12", "canceled", 4, 0, NOW + 20, NOW + 1, None, None),
    ]
    provider = [
        ProviderTask("p10", "soak#10 [sim:seconds=2]", "success", NOW + 3),
        ProviderTask("p11", "soak#11 [sim:fail=500]", "fail", NOW + 3),
    ]
    entries = {
        A: [
            {"kind": "grant", "amount": 100, "reason": "opening balance"},
            {"kind": "grant", "amount": 10, "reason": "soak"},
            {"kind": "transfer_out", "amount": -5},
            {"kind": "hold", "amount": 0, "taskId": "task_10"},
            {"kind": "hold", "amount": 0, "taskId": "task_12"},
            {"kind": "release", "amount": 0, "taskId": "task_12"},
            {"kind": "capture", "amount": -4, "taskId": "task_10"},
        ],
        B: [
            {"kind": "grant", "amount": 50, "reason": "opening balance"},
            {"kind": "transfer_in", "amount": 5},
            {"kind": "hold", "amount": 0, "taskId": "task_11"},
            {"kind": "release", "amount": 0, "taskId": "task_11"},
        ],
    }
    final = Final(tasks, provider, {A: (101, 0), B: (55, 0)}, entries, True, [])
    return h, final


def _classes(h: History, f: Final) -> dict[str, int]:
    v = check(h, f)
    return {c: v.count(c) for c in ("lost", "doubled", "wrong")}


def test_a_consistent_world_passes() -> None:
    h, f = _world()
    v = check(h, f)
    assert v.problems == []
    assert (v.stats["tasks"], v.stats["captured"], v.stats["released"]) == (3, 1, 2)


def test_capture_without_provider_success_is_wrong() -> None:
    h, f = _world()
    f.provider[0] = dataclasses.replace(f.provider[0], state="fail")
    assert _classes(h, f) == {"lost": 0, "doubled": 0, "wrong": 1}
    h, f = _world()
    f.provider[0] = dataclasses.replace(f.provider[0], finished=NOW + 30)  # succeeded after the capture
    assert _classes(h, f)["wrong"] == 1


def test_release_of_a_provider_success_before_the_deadline_is_wrong_unless_orphaned() -> None:
    h, f = _world()
    f.provider[1] = dataclasses.replace(f.provider[1], state="success")
    assert _classes(h, f)["wrong"] == 1
    f.tasks[1] = dataclasses.replace(f.tasks[1], provider_task_id=None, error_code="submit_interrupted")
    v = check(h, f)
    assert v.problems == []
    assert v.stats["orphans"] == 1
    # After the deadline the provider's success comes too late: releasing is right.
    h, f = _world()
    f.provider[1] = dataclasses.replace(f.provider[1], state="success", finished=NOW + 25)
    assert check(h, f).problems == []


def test_two_tasks_for_one_keyed_submit_are_doubled() -> None:
    h, f = _world()
    f.tasks.append(dataclasses.replace(f.tasks[2], id="task_12b"))
    f.entries[A] += [{"kind": "hold", "taskId": "task_12b"}, {"kind": "release", "taskId": "task_12b"}]
    assert _classes(h, f)["doubled"] == 1


def test_a_second_provider_create_is_doubled() -> None:
    h, f = _world()
    f.provider.append(dataclasses.replace(f.provider[0], id="p10b"))
    assert _classes(h, f) == {"lost": 0, "doubled": 1, "wrong": 0}


def test_a_repeat_answering_another_task_is_doubled() -> None:
    h, f = _world()
    h.outcomes[13].answers = [{"code": 202, "id": "task_99"}]
    assert _classes(h, f)["doubled"] == 1


def test_a_second_settlement_entry_is_doubled() -> None:
    h, f = _world()
    f.entries[A].append({"kind": "release", "amount": 0, "taskId": "task_10"})
    assert _classes(h, f)["doubled"] == 1


def test_a_balance_other_than_the_operations_imply_is_wrong() -> None:
    h, f = _world()
    f.accounts[B] = (54, 0)
    assert _classes(h, f) == {"lost": 0, "doubled": 0, "wrong": 1}
    h, f = _world()
    f.accounts[A] = (101, 4)  # still held
    assert _classes(h, f)["wrong"] == 1


def test_a_grant_applied_twice_is_doubled() -> None:
    h, f = _world()
    f.entries[A].insert(2, {"kind": "grant", "amount": 10, "reason": "soak"})
    f.accounts[A] = (111, 0)
    c = _classes(h, f)
    assert c["doubled"] == 1
    assert c["wrong"] == 1  # and the balance is 10 too high


def test_an_accepted_task_missing_or_live_is_lost() -> None:
    h, f = _world()
    f.tasks[0] = dataclasses.replace(f.tasks[0], status="running", charged=0)
    assert _classes(h, f)["lost"] == 1
    h, f = _world()
    del f.tasks[0]
    f.accounts[A] = (105, 0)
    f.entries[A] = [e for e in f.entries[A] if e.get("taskId") != "task_10"]
    assert _classes(h, f)["lost"] == 1


def test_a_terminal_state_that_changes_is_wrong() -> None:
    h, f = _world()
    h.views.append((NOW + 7, "task_12", "queued", 0))
    assert _classes(h, f)["wrong"] >= 1


def test_a_refused_submit_that_made_a_task_and_a_500_are_wrong() -> None:
    h, f = _world()
    h.outcomes[11].status = "fail"
    h.outcomes[11].code = 402
    h.bad_answers.append({"op": 11, "method": "POST", "path": "/v1/jobs", "code": 500, "body": {}})
    assert _classes(h, f)["wrong"] == 2


def test_an_unclean_audit_is_wrong() -> None:
    h, f = _world()
    f.audit_ok = False
    f.audit_problems = [{"kind": "balance_mismatch", "accountId": A, "detail": "..."}]
    assert _classes(h, f)["wrong"] == 1


def _with_refunds() -> tuple[History, Final]:
    """The world above, plus a purchase of 100 credits by B (paid 1000 cents) refunded in half, then in full,
    and the half refund delivered again: 100 taken back in all, in two entries."""
    h, f = _world()
    purchase: dict[str, Any] = {
        "id": 4,
        "op": "purchase",
        "account": 1,
        "credits": 100,
        "event": "evt_4",
        "payment_intent": "pi_4",
    }
    half: dict[str, Any] = {"id": 5, "op": "refund", "of": 4, "share": "half", "event": "evt_5"}
    full: dict[str, Any] = {"id": 6, "op": "refund", "of": 4, "share": "full", "event": "evt_6"}
    again: dict[str, Any] = {"id": 7, "op": "refund_duplicate", "of": 5}
    for op in (purchase, half, full, again):
        out = Outcome(op, status="ok", code=200, body={"eventId": op.get("event")})
        out.answers.append({"code": 200, "id": op.get("event")})
        h.outcomes[int(op["id"])] = out
    f.entries[B] += [
        {"kind": "purchase", "amount": 100},
        {"kind": "refund", "amount": -50},
        {"kind": "refund", "amount": -50},
    ]
    return h, f


def test_refunds_take_back_their_share_once() -> None:
    h, f = _with_refunds()
    assert check(h, f).problems == []  # B: 55 + 100 - 100
    f.entries[B].append({"kind": "refund", "amount": -50})  # the duplicate taken back again
    f.accounts[B] = (5, 0)
    c = _classes(h, f)
    assert c["doubled"] == 1
    assert c["wrong"] == 1  # and the balance is 50 too low


# --- a real run ---------------------------------------------------------------------------------------------------


SEED = 885  # its 30 s hold every fault kind: no provider credits, kills, FLUSHALL, a Redis restart, a Postgres stop


@pytest.mark.slow
def test_a_short_seeded_soak_finds_nothing(tmp_path: Path) -> None:
    tools = postgres_tools()
    if isinstance(tools, str) or not Path(REDIS_SERVER).is_file():
        pytest.skip(f"cannot make a throwaway Postgres or Redis: {tools if isinstance(tools, str) else REDIS_SERVER}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDITQ_", "KIE_", "PAYMENTS_"))}
    argv = [sys.executable, "-m", "soak", "--seed", str(SEED), "--seconds", "30", "--quick", "--log-dir", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"{line}\n{done.stderr[-6000:]}"
    assert re.search(r" lost=0 doubled=0 wrong=0 PASS ", line), line
    # The run did what it says: faults struck, tasks ran, the log holds the schedule.
    counts = dict(re.findall(r"(\w+)=(\d+)", line))
    assert int(counts["faults"]) >= 4
    assert int(counts["tasks"]) >= 30
    (log,) = tmp_path.glob("seed-*/soak.jsonl")
    header, plan = read_log(log)
    assert header["seed"] == SEED
    assert plan == make_plan(SEED, 30, Shape.from_json(header["shape"]))
    struck = {json.loads(x)["fault"] for x in log.read_text().splitlines() if '"type":"fault"' in x}
    assert struck == {k for k, _ in FAULT_WEIGHTS}, struck
