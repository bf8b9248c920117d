"""The audit: checks every money invariant for every account and task, and (``fix``) repairs only what the normal
code paths would have done anyway. ``creditq audit`` and ``GET /v1/admin/reconcile`` both call :func:`audit`.

Checks (each problem names its ``kind``):
- ``balance_mismatch``: an account's balance ≠ Σ of its entries' amounts;
- ``held_mismatch``: held ≠ Σ heldDelta, or held ≠ Σ of its open holds;
- ``negative_available``: held > balance with no take-back to explain it (the schema forbids it; checked in case
  a constraint was dropped). An account that a refund or dispute left owing is in debt, not in error;
- ``lots_mismatch``: Σ remaining of an account's lots ≠ its balance (≠ 0 while the balance is below zero, in
  debt), or a lot with remaining outside 0..granted;
- ``entry_arithmetic``: an entry with balanceAfter - balanceBefore ≠ amount, or a break in an account's chain
  (an entry's balanceBefore ≠ the previous entry's balanceAfter);
- ``open_hold_on_terminal_task`` / ``open_hold_without_task``: a hold still open whose task has ended or is gone;
- ``stuck_task``: a live task past its deadline plus the sweep interval;
- ``capture_mismatch``: a succeeded task without exactly one capture, or a failed/canceled task with a capture;
- ``unapplied_event``: a stored payment event not applied.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg

_CHECKS = """
SELECT 'balance_mismatch' AS kind, a.id AS account_id, NULL AS task_id, NULL AS event_id,
       format('balance is %s but its entries sum to %s', a.balance, coalesce(s.amount, 0)) AS detail
  FROM accounts a LEFT JOIN (SELECT account_id, sum(amount) AS amount, sum(held_delta) AS held
                               FROM ledger_entries GROUP BY account_id) s ON s.account_id = a.id
 WHERE a.balance <> coalesce(s.amount, 0)
UNION ALL
SELECT 'held_mismatch', a.id, NULL, NULL,
       format('held is %s; entries say %s; open holds sum to %s', a.held, coalesce(s.held, 0), coalesce(h.amount, 0))
  FROM accounts a
  LEFT JOIN (SELECT account_id, sum(held_delta) AS held FROM ledger_entries GROUP BY account_id) s ON s.account_id = a.id
  LEFT JOIN (SELECT account_id, sum(amount) AS amount FROM holds WHERE status = 'held' GROUP BY account_id) h
         ON h.account_id = a.id
 WHERE a.held <> coalesce(s.held, 0) OR a.held <> coalesce(h.amount, 0)
UNION ALL
SELECT 'negative_available', id, NULL, NULL, format('held %s exceeds balance %s', held, balance)
  FROM accounts WHERE (held > balance AND NOT owing) OR held < 0
UNION ALL
SELECT 'lots_mismatch', a.id, NULL, NULL,
       format('balance is %s but its lots hold %s', a.balance, coalesce(l.remaining, 0))
  FROM accounts a LEFT JOIN (SELECT account_id, sum(remaining) AS remaining FROM lots GROUP BY account_id) l
         ON l.account_id = a.id
 WHERE greatest(a.balance, 0) <> coalesce(l.remaining, 0)
UNION ALL
SELECT 'lots_mismatch', account_id, NULL, NULL, format('lot %s has %s of %s left', id, remaining, granted)
  FROM lots WHERE remaining < 0 OR remaining > granted
UNION ALL
SELECT 'entry_arithmetic', account_id, task_id, NULL,
       format('entry %s: %s %s → %s', id, kind, balance_before, balance_after)
  FROM ledger_entries WHERE balance_after - balance_before <> amount
UNION ALL
SELECT 'entry_arithmetic', account_id, task_id, NULL,
       format('entry %s starts at %s but the previous entry ended at %s', id, balance_before, prev_after)
  FROM (SELECT *, lag(balance_after) OVER (PARTITION BY account_id ORDER BY id) AS prev_after,
               lag(held_after) OVER (PARTITION BY account_id ORDER BY id) AS prev_held
          FROM ledger_entries) e
 WHERE prev_after IS NOT NULL AND (balance_before <> prev_after OR held_after - held_delta <> prev_held)
UNION ALL
SELECT CASE WHEN t.id IS NULL THEN 'open_hold_without_task' ELSE 'open_hold_on_terminal_task' END,
       h.account_id, h.task_id, NULL,
       format('hold %s of %s is still open; task is %s', h.id, h.amount, coalesce(t.status, 'missing'))
  FROM holds h LEFT JOIN tasks t ON t.id = h.task_id
 WHERE h.status = 'held' AND h.task_id IS NOT NULL AND (t.id IS NULL OR t.status NOT IN ('queued', 'running'))
UNION ALL
SELECT 'stuck_task', account_id, id, NULL,
       format('task is %s and passed its deadline %s ago', status, date_trunc('second', now() - deadline_at))
  FROM tasks WHERE status IN ('queued', 'running') AND deadline_at < now() - make_interval(secs => $1)
UNION ALL
SELECT 'capture_mismatch', t.account_id, t.id, NULL,
       format('task is %s with %s capture(s)', t.status, coalesce(c.n, 0))
  FROM tasks t LEFT JOIN (SELECT task_id, count(*) AS n FROM ledger_entries WHERE kind = 'capture'
                           GROUP BY task_id) c ON c.task_id = t.id
 WHERE (t.status = 'succeeded' AND coalesce(c.n, 0) <> 1)
    OR (t.status IN ('failed', 'canceled') AND coalesce(c.n, 0) > 0)
UNION ALL
SELECT 'unapplied_event', account_id, NULL, id, format('%s event not applied: %s', type, coalesce(detail, '?'))
  FROM payment_events WHERE status = 'pending'
"""

# Every kind the checks above can report, read from them (a kind's literal opens its branch of the UNION, or is
# a branch of its CASE), so that a check added is a kind listed: /metrics shows each, 0 while clean.
KINDS: tuple[str, ...] = tuple(dict.fromkeys(re.findall(r"(?:^SELECT|THEN|ELSE) '([a-z_]+)'", _CHECKS, re.M)))


@dataclass(slots=True)
class Problem:
    kind: str
    detail: str
    accountId: str | None = None
    taskId: str | None = None
    eventId: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(slots=True)
class Report:
    problems: list[Problem] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "problems": [p.as_dict() for p in self.problems]}
        if self.fixed:
            out["fixed"] = self.fixed
        return out


# A repair step: given the pool and a problem, do what the normal code path would have done; return what it did
# (or None when it cannot). Registered by the modules that own those paths (the worker settles stuck tasks, the
# payments module re-applies events), so that the audit never writes money itself.
Fixer = Callable[[asyncpg.Pool, Problem], Awaitable[str | None]]


async def check(conn: asyncpg.Connection | asyncpg.Pool, sweep_seconds: float) -> list[Problem]:
    """Every problem found, in one read-only query (one consistent snapshot)."""
    rows = await conn.fetch(_CHECKS, sweep_seconds)
    return [
        Problem(
            kind=r["kind"],
            detail=r["detail"],
            accountId=r["account_id"],
            taskId=r["task_id"],
            eventId=r["event_id"],
        )
        for r in rows
    ]


async def audit(pool: asyncpg.Pool, sweep_seconds: float, fixers: dict[str, Fixer] | None = None) -> Report:
    """Check; with ``fixers`` (kind → repair), repair what can be repaired and check again.

    The report's ``problems`` are those left after repairs; ``fixed`` says what each repair did. Fixers only run
    normal code paths (settle a task, re-apply an event), never write a balance.
    """
    problems = await check(pool, sweep_seconds)
    report = Report(problems=problems)
    if not fixers or not problems:
        return report
    for p in problems:
        fixer = fixers.get(p.kind)
        if fixer is None:
            continue
        did = await fixer(pool, p)
        if did:
            report.fixed.append(did)
    report.problems = await check(pool, sweep_seconds)
    return report
