"""Repairs for ``creditq audit --fix`` and ``GET /v1/admin/reconcile?fix=true``: each runs the path the worker
would have run, never a balance write. :func:`all_fixers` is what both run: these and the payments module's.

- ``stuck_task`` (a live task past its deadline plus the sweep interval): the deadline path, ``finish`` failed
  with ``provider_timeout``, which releases the hold in the same transaction.
- ``open_hold_on_terminal_task``: settle the hold through ``ledger.money`` as the task's end says: capture if the
  task succeeded, release otherwise. Both are guarded by the hold's status (a second settle is a no-op).
"""

from __future__ import annotations

import asyncpg

from shared.config import Settings
from shared.errors import NotFound
from shared.ledger import money, tasks
from shared.ledger.audit import Fixer, Problem
from shared.pricing import Pricing, load


async def _task_of(pool: asyncpg.Pool, p: Problem) -> asyncpg.Record | None:
    """The task a problem names, or None (no task named, or gone)."""
    if p.taskId is None:
        return None
    try:
        return await tasks.get(pool, p.taskId)
    except NotFound:
        return None


def fixers(settings: Settings) -> dict[str, Fixer]:
    """The audit's repairs by problem kind. Each is idempotent and returns a line saying what it did, or None
    when there is nothing (left) to do. Raises Unavailable."""

    async def stuck_task(pool: asyncpg.Pool, p: Problem) -> str | None:
        task = await _task_of(pool, p)
        if task is None or task["status"] not in tasks.LIVE:
            return None
        _, changed = await tasks.finish(
            pool,
            task["id"],
            "failed",
            error_code="provider_timeout",
            error_message="the provider had not finished the task by its deadline",
        )
        return f"task {task['id']}: failed provider_timeout, hold released" if changed else None

    async def open_hold_on_terminal_task(pool: asyncpg.Pool, p: Problem) -> str | None:
        task = await _task_of(pool, p)
        if task is None or task["status"] in tasks.LIVE:
            return None
        # A task's hold has the task's id (cq_submit_batch).
        if task["status"] == "succeeded":
            hold = await money.capture(pool, task["id"], int(task["cost"]))
        else:
            hold = await money.release(pool, task["id"])
        return f"task {task['id']} ({task['status']}): hold {hold['status']}"

    _ = settings  # the repairs need nothing from the settings today; the signature lets them grow
    return {"stuck_task": stuck_task, "open_hold_on_terminal_task": open_hold_on_terminal_task}


def all_fixers(settings: Settings, prices: Pricing | None = None) -> dict[str, Fixer]:
    """Every repair of ``creditq audit --fix`` and ``GET /v1/admin/reconcile?fix=true``, by problem kind: the
    worker's (:func:`fixers`) and the payments module's (``unapplied_event``: re-apply the stored event). The one
    place both callers get their repairs from. ``prices`` defaults to the price list of ``CREDITQ_PRICING``.
    Raises ConfigError (a bad price list)."""
    from shared.ledger import payments

    return {**fixers(settings), **payments.fixers(prices or load(settings.pricing_path))}
