"""The checker: from what the clients were told (the history) and what the provider did (the simulator's tasks),
decide whether creditq kept its promises. A pure function of its inputs, so it is tested without processes.

Each violation is one problem in one of three classes, the counts of the soak's line:

- **lost**: a task a client was given (202) that is missing or not terminal after the drain; an operation whose
  outcome could not be learnt even with everything up again.
- **doubled**: more than one task for one submit (an idempotent repeat that made a second task, or answered
  another task); a provider task created twice for one creditq task; a task with more than one settlement entry;
  a transfer repeat that answered another transfer; more ledger entries of a kind than accepted operations.
- **wrong**: a capture without a provider success before the settlement, a release of a task the provider had
  finished successfully before its deadline (unless creditq never learnt the provider's task: the documented
  crash window, counted as ``orphans``), a charge other than 0 or the cost, entries other than ``[hold, capture]``
  / ``[hold, release]``, a balance or held amount other than the accepted operations imply, a terminal state that
  changed, a task that no operation could have made, a refused submit that made a task, an answer 5xx other
  than 503, an audit that is not clean.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from soak.history import History

TERMINAL = ("succeeded", "failed", "canceled")
ORDER = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2, "canceled": 2}
TOLERANCE = 1.0  # seconds of clock slack between the simulator's timestamps and Postgres's
OPENING = "opening balance"  # the reason of the grant an account is created with
_TAG = re.compile(r"soak#(\d+)")


@dataclass(frozen=True)
class Task:
    """One creditq task at the end: the client's view plus the bookkeeping the view does not show (its prompt
    names the operation that made it; deadline and provider task id come from the task store)."""

    id: str
    account_id: str
    prompt: str
    status: str
    cost: int
    charged: int
    deadline: float  # epoch seconds
    finished: float | None  # epoch seconds
    provider_task_id: str | None
    error_code: str | None

    @property
    def tag(self) -> int | None:
        m = _TAG.search(self.prompt)
        return int(m.group(1)) if m else None


@dataclass(frozen=True)
class ProviderTask:
    """A simulator task: its state at the end and when it reached (or will reach) it."""

    id: str
    prompt: str
    state: str
    finished: float

    @property
    def tag(self) -> int | None:
        m = _TAG.search(self.prompt)
        return int(m.group(1)) if m else None


@dataclass
class Final:
    """What was observed after the drain."""

    tasks: list[Task]
    provider: list[ProviderTask]
    accounts: dict[str, tuple[int, int]]  # accountId → (balance, held)
    entries: dict[str, list[dict[str, Any]]]  # accountId → entries, oldest first
    audit_ok: bool
    audit_problems: list[dict[str, Any]]


@dataclass
class Verdict:
    problems: list[tuple[str, str]] = field(default_factory=list)  # (lost|doubled|wrong, detail)
    stats: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, cls: str, detail: str) -> None:
        self.problems.append((cls, detail))

    def count(self, cls: str) -> int:
        return sum(1 for c, _ in self.problems if c == cls)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(history: History, final: Final) -> Verdict:
    """Every promise, checked. See the module docstring for what each class means."""
    v = Verdict()
    outcomes = history.outcomes
    tasks_by_tag: dict[int, list[Task]] = defaultdict(list)
    for t in final.tasks:
        if t.tag is None or t.tag not in outcomes:
            v.add("wrong", f"task {t.id} ({t.prompt[:40]!r}) was made by no operation of the soak")
            continue
        tasks_by_tag[t.tag].append(t)
    provider_by_tag: dict[int, list[ProviderTask]] = defaultdict(list)
    for p in final.provider:
        if p.tag is not None:
            provider_by_tag[p.tag].append(p)
    account_ids = {idx: acc for idx, (acc, _) in history.accounts.items()}

    _check_submits(v, history, tasks_by_tag)
    for t in final.tasks:
        if t.tag is not None and t.tag in outcomes:
            _check_task(v, t, provider_by_tag.get(t.tag, []), final.entries.get(t.account_id, []))
    _check_views(v, history, {t.id: t for t in final.tasks})
    _check_money(v, history, final, account_ids)
    for bad in history.bad_answers:
        v.add(
            "wrong", f"op {bad['op']}: {bad['method']} {bad['path']} answered {bad['code']}: {str(bad['body'])[:200]}"
        )
    if not final.audit_ok:
        for problem in final.audit_problems or [{"detail": "audit failed"}]:
            v.add("wrong", f"audit: {problem}")
    v.stats["tasks"] = len(final.tasks)
    v.stats["captured"] = sum(1 for t in final.tasks if t.status == "succeeded")
    v.stats["released"] = sum(1 for t in final.tasks if t.status in ("failed", "canceled"))
    return v


def _check_submits(v: Verdict, history: History, tasks_by_tag: dict[int, list[Task]]) -> None:
    """Each submit made the tasks its answers imply: one for an accepted submit (the one it was told), none for
    a refused one, at most one for an unknown one; repeats answered that same task; conflicts made nothing."""
    for oid, out in history.outcomes.items():
        kind = out.op.get("op")
        if kind == "submit":
            made = tasks_by_tag.get(oid, [])
            told = {a["id"] for a in out.answers if a["code"] == 202 and a["id"]}
            if len(made) > 1:
                v.add("doubled", f"submit {oid} made {len(made)} tasks: {[t.id for t in made]}")
            if len(told) > 1:
                v.add("doubled", f"submit {oid} was answered with {len(told)} different tasks: {sorted(told)}")
            if out.status == "ok":
                v.stats["submits_accepted"] += 1
                if not any(t.id in told for t in made):
                    v.add("lost", f"submit {oid} was answered task {sorted(told)} but it is not in the store")
            elif out.status == "fail":
                v.stats["submits_refused"] += 1
                if made:
                    v.add("wrong", f"submit {oid} was refused ({out.code}) but made task {made[0].id}")
            elif out.status == "info":
                v.stats["submits_unknown"] += 1
                if out.op.get("key"):
                    v.add("lost", f"submit {oid} (keyed) never got a definite answer")
        elif kind == "repeat":
            first = history.outcomes.get(int(out.op["of"]))
            first_id = first.result_id() if first is not None else None
            for a in out.answers:
                if a["code"] == 202 and a["id"] != first_id:
                    v.add("doubled", f"repeat {oid} of submit {out.op['of']} answered {a['id']}, not {first_id}")
                elif a["code"] != 202:
                    v.add("wrong", f"repeat {oid} of accepted submit {out.op['of']} answered {a['code']}")
        elif kind == "conflict":
            if tasks_by_tag.get(oid):
                v.add("wrong", f"conflict {oid} (same key, other body) made task {tasks_by_tag[oid][0].id}")
            for a in out.answers:
                if a["code"] != 409:
                    v.add("wrong", f"conflict {oid} (same key, other body) answered {a['code']}, not 409")
        elif kind == "transfer_repeat":
            first = history.outcomes.get(int(out.op["of"]))
            first_id = first.result_id() if first is not None else None
            for a in out.answers:
                if a["code"] == 201 and a["id"] != first_id:
                    v.add("doubled", f"transfer repeat {oid} answered transfer {a['id']}, not {first_id}")
        elif kind in ("purchase_duplicate", "refund", "refund_duplicate"):
            for a in out.answers:
                if a["code"] != 200:
                    v.add("wrong", f"{kind.replace('_', ' ')} {oid} answered {a['code']}")
        if kind in ("transfer", "grant", "purchase", "refund") and out.status == "info":
            v.add("lost", f"{kind} {oid} never got a definite answer")


def _check_task(v: Verdict, t: Task, provider: list[ProviderTask], entries: list[dict[str, Any]]) -> None:
    """One task against the provider's record and its own ledger entries."""
    if t.status not in TERMINAL:
        v.add("lost", f"task {t.id} is still {t.status} after the drain")
        return
    if len(provider) > 1:
        v.add("doubled", f"task {t.id}: the provider created {len(provider)} tasks for it: {[p.id for p in provider]}")
    p = provider[0] if provider else None
    success = p.finished if p is not None and p.state == "success" else None
    expected_charge = t.cost if t.status == "succeeded" else 0
    if t.charged != expected_charge:
        v.add("wrong", f"task {t.id} is {t.status} but charged {t.charged} (cost {t.cost})")
    finished = t.finished or 0.0
    if t.status == "succeeded":
        if success is None:
            state = p.state if p is not None else "no provider task"
            v.add("wrong", f"task {t.id} was captured but the provider's task is {state}")
        elif success > finished + TOLERANCE:
            v.add("wrong", f"task {t.id} was captured {success - finished:.1f}s before the provider succeeded")
        elif success > t.deadline + TOLERANCE:
            v.stats["captured_after_deadline"] += 1  # seen at the deadline's last look: allowed
    else:
        if t.status == "canceled" and p is not None:
            v.add("wrong", f"task {t.id} was canceled but the provider ran it ({p.id})")
        if success is not None and success <= t.deadline - TOLERANCE:
            if t.provider_task_id is None:
                v.stats["orphans"] += 1  # never learnt the provider's task: refunded, the documented price
            else:
                v.add(
                    "wrong",
                    f"task {t.id} was released ({t.error_code}) though the provider succeeded "
                    f"{t.deadline - success:.1f}s before its deadline",
                )
        elif success is not None:
            v.stats["released_succeeded_late"] += 1
    mine = [e for e in entries if e.get("taskId") == t.id]
    kinds = [e["kind"] for e in mine]
    want = ["hold", "capture"] if t.status == "succeeded" else ["hold", "release"]
    if kinds != want:
        cls = "doubled" if len(kinds) > 2 else "wrong"
        v.add(cls, f"task {t.id} ({t.status}) has entries {kinds}, not {want}")
    elif t.status == "succeeded" and -int(mine[1]["amount"]) != t.cost:
        v.add("wrong", f"task {t.id}: capture of {-int(mine[1]['amount'])}, cost {t.cost}")


def _check_views(v: Verdict, history: History, tasks: dict[str, Task]) -> None:
    """Every view a client saw of a task moves forward only, and a terminal state never changes."""
    seen: dict[str, tuple[str, int]] = {}
    for _, task_id, status, charged in sorted(history.views):
        before = seen.get(task_id)
        if before is not None:
            b_status, b_charged = before
            if b_status in TERMINAL and (status, charged) != before:
                v.add("wrong", f"task {task_id} was seen {b_status} (charged {b_charged}), later {status} ({charged})")
            elif ORDER.get(status, 0) < ORDER.get(b_status, 0):
                v.add("wrong", f"task {task_id} was seen {b_status}, later {status}")
        seen[task_id] = (status, charged)
    for task_id, (status, charged) in seen.items():
        final = tasks.get(task_id)
        if final is None:
            continue  # reported by the submit checks
        if status in TERMINAL and (final.status, final.charged) != (status, charged):
            v.add("wrong", f"task {task_id} was told {status} ({charged}) but ended {final.status} ({final.charged})")
    for out in history.outcomes.values():
        if out.op.get("op") == "cancel" and out.status == "ok":
            final = tasks.get(str(out.op.get("task")))
            if final is not None and final.status != "canceled":
                v.add("wrong", f"task {final.id} was told canceled but ended {final.status}")


def _check_money(v: Verdict, history: History, final: Final, account_ids: dict[int, str]) -> None:
    """Every account's balance is what its accepted operations imply, nothing is held, and each accepted money
    operation has exactly one entry."""
    expected: dict[str, int] = {}
    count: dict[tuple[str, str], int] = defaultdict(int)
    for out in history.outcomes.values():
        op = out.op
        kind = op.get("op")
        if kind == "account":
            expected[account_ids[out.id]] = int(op["credits"])
    for out in history.outcomes.values():
        op = out.op
        kind = op.get("op")
        if out.status != "ok":
            continue
        if kind == "grant":
            acc = account_ids[int(op["account"])]
            expected[acc] += int(op["amount"])
            count[(acc, "grant" if int(op["amount"]) > 0 else "adjustment")] += 1
        elif kind == "transfer":
            src, dst = account_ids[int(op["account"])], account_ids[int(op["to"])]
            expected[src] -= int(op["amount"])
            expected[dst] += int(op["amount"])
            count[(src, "transfer_out")] += 1
            count[(dst, "transfer_in")] += 1
        elif kind == "purchase":
            acc = account_ids[int(op["account"])]
            expected[acc] += int(op["credits"])
            count[(acc, "purchase")] += 1
    # Refunds take back the refunded share of their purchase's credits, once, whatever the order and the
    # repeats: of the largest cumulative amount_refunded accepted for it (rounded down, as creditq does).
    refunded: dict[int, int] = defaultdict(int)
    for out in history.outcomes.values():
        if out.op.get("op") in ("refund", "refund_duplicate") and out.status == "ok":
            refund = out.op if out.op["op"] == "refund" else history.outcomes[int(out.op["of"])].op
            purchase = history.outcomes[int(refund["of"])].op
            money = int(purchase["credits"]) * 10
            amount = money if refund["share"] == "full" else money // 2
            refunded[int(purchase["id"])] = max(refunded[int(purchase["id"])], amount)
    taken: dict[str, int] = defaultdict(int)
    for pid, amount in refunded.items():
        purchase = history.outcomes[pid].op
        money = int(purchase["credits"]) * 10
        share = int(purchase["credits"]) * min(amount, money) // money
        acc = account_ids[int(purchase["account"])]
        expected[acc] -= share
        taken[acc] += share
    for acc, want in taken.items():
        got = -sum(int(e["amount"]) for e in final.entries.get(acc, []) if e["kind"] == "refund")
        if got != want:
            cls = "doubled" if got > want else "wrong"
            v.add(cls, f"account {acc}: refund entries take back {got}, the accepted refunds {want}")
    for t in final.tasks:
        if t.account_id in expected:
            expected[t.account_id] -= t.charged
    for acc, want in expected.items():
        balance, held = final.accounts.get(acc, (None, None))
        if balance != want:
            v.add("wrong", f"account {acc}: balance {balance}, the accepted operations imply {want}")
        if held != 0:
            v.add("wrong", f"account {acc}: {held} still held after the drain")
        kinds: dict[str, int] = defaultdict(int)
        for e in final.entries.get(acc, []):
            if not (e["kind"] == "grant" and e.get("reason") == OPENING):
                kinds[str(e["kind"])] += 1
        for kind in ("grant", "adjustment", "transfer_out", "transfer_in", "purchase"):
            got = kinds[kind]
            if got != count[(acc, kind)]:
                cls = "doubled" if got > count[(acc, kind)] else "lost"
                v.add(cls, f"account {acc}: {got} {kind} entries for {count[(acc, kind)]} accepted operations")
