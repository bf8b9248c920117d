"""The audit's repairs, for ``creditq audit --fix`` and ``GET /v1/admin/reconcile?fix=true``: each runs the path
the system would have run, never a balance write. :func:`all_fixers` is what both run: these and the payments
module's; :func:`repairing` opens the connections they use and closes them after.

- ``stuck_task`` (a live task past its deadline plus the sweep interval). A task that never reached the provider
  (queued, no create begun) gets the deadline's own ending, :func:`shared.settlement.expire`, exactly as the
  worker and the sweeper end it: failed ``provider_timeout``, the hold released in the same transaction, then
  the tier slot freed and the client notified. A task that may be at the provider (running, or a create begun)
  is never refunded here: the provider may have finished and billed it, and only its verdict or a last status
  query (``worker.step.end_overdue``) may end it, so the repair hands it to the workers (its step job queued)
  and leaves it live.
- ``open_hold_on_terminal_task``: settle the hold through ``ledger.money`` as the task's end says: capture if the
  task succeeded, release otherwise. Both are guarded by the hold's status (a second settle is a no-op).
- ``unapplied_event``: re-apply the stored payment event (``ledger.payments.fixers``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import httpx
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from shared import queue, settlement
from shared.config import Settings
from shared.errors import NotFound, Unavailable
from shared.ledger import money, payments, tasks
from shared.ledger.audit import Fixer, Problem
from shared.pricing import Pricing, load
from shared.provider import new_http_client


def _may_be_at_provider(task: asyncpg.Record) -> bool:
    """Whether the provider may hold a task of this one (so that only its answer may end it)."""
    return bool(
        task["status"] == "running" or task["provider_task_id"] is not None or task["submit_started_at"] is not None
    )


async def _task_of(pool: asyncpg.Pool, p: Problem) -> asyncpg.Record | None:
    """The task a problem names, or None (no task named, or gone)."""
    if p.taskId is None:
        return None
    try:
        return await tasks.get(pool, p.taskId)
    except NotFound:
        return None


def fixers(
    settings: Settings, *, redis: ArqRedis | None = None, http: httpx.AsyncClient | None = None
) -> dict[str, Fixer]:
    """The task repairs by problem kind. Each is idempotent and returns a line saying what it did, or None when
    there is nothing (left) to do. ``redis`` and ``http`` are what the stuck task's ending uses to free the tier
    slot and notify the client (each skipped when None). Raises Unavailable."""

    async def stuck_task(pool: asyncpg.Pool, p: Problem) -> str | None:
        task = await _task_of(pool, p)
        if task is None or task["status"] not in tasks.LIVE:
            return None
        if _may_be_at_provider(task):
            if redis is None:
                return f"task {task['id']}: may be at the provider; left live until a worker asks the provider"
            try:
                await queue.enqueue(redis, settings, task["id"])
            except RedisError:
                return f"task {task['id']}: may be at the provider; left live (Redis unreachable to hand it over)"
            return f"task {task['id']}: may be at the provider; handed to a worker for a last status query"
        _, changed = await settlement.expire(settlement.Connections(pool, settings, redis, http), task)
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

    return {"stuck_task": stuck_task, "open_hold_on_terminal_task": open_hold_on_terminal_task}


def all_fixers(
    settings: Settings,
    prices: Pricing | None = None,
    *,
    redis: ArqRedis | None = None,
    http: httpx.AsyncClient | None = None,
) -> dict[str, Fixer]:
    """Every repair of ``creditq audit --fix`` and ``GET /v1/admin/reconcile?fix=true``, by problem kind: the task
    repairs (:func:`fixers`) and the payments module's (``unapplied_event``). ``prices`` defaults to the price list
    of ``CREDITQ_PRICING``. Raises ConfigError (a bad price list)."""
    return {**fixers(settings, redis=redis, http=http), **payments.fixers(prices or load(settings.pricing_path))}


@contextlib.asynccontextmanager
async def repairing(
    settings: Settings, prices: Pricing | None = None, *, redis: ArqRedis | None = None, connect_redis: bool = True
) -> AsyncIterator[dict[str, Fixer]]:
    """:func:`all_fixers` with the connections the endings use: the process's kind of HTTP client (made here and
    closed after) and ``redis``, or, with ``connect_redis`` and no ``redis`` given, a Redis connection made here
    (best effort: with Redis unreachable the repairs still run, and the slots free themselves at their tasks'
    deadlines). Raises ConfigError (a bad price list)."""
    prices = prices or load(settings.pricing_path)  # a bad price list fails before anything is opened
    own: ArqRedis | None = None
    if redis is None and connect_redis:
        with contextlib.suppress(Unavailable):
            own = redis = await queue.connect(settings)
    try:
        async with new_http_client(settings) as http:
            yield all_fixers(settings, prices, redis=redis, http=http)
    finally:
        if own is not None:
            await own.aclose()
