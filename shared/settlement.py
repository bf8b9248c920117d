"""How a task ends: the one ending shared by the worker's step, the sweeper and the audit's repairs.

:func:`settle` runs the terminal transaction (``ledger.tasks.finish``: the terminal state and the capture or
release of the hold, one transaction, exactly once), and then, only if this call ended the task, frees its tier
slot (:func:`release_slot`) and schedules the client's webhook (:func:`notify`), both best effort and after
the commit.
:func:`cancel` is the client's ending of a queued task, with the same release and notification.
:func:`expire` is the deadline's ending (``provider_timeout``), the same whether a worker's step, the sweeper or
``creditq audit --fix`` finds the task past its deadline.

What an ending needs besides Postgres is given as a :class:`Context`: the worker's ``Runtime`` is one; the
repairs (:mod:`shared.repairs`) build their own. A context without Redis skips the slot release (the slot frees
itself at the task's deadline) and the webhook's scheduling (the delivery sweep sends it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import httpx
import structlog
from arq.connections import ArqRedis
from redis.asyncio import Redis

from shared import queue, tier_limits
from shared.config import Settings
from shared.errors import Unavailable
from shared.ledger import tasks
from shared.ledger import webhooks as outbox

log = structlog.get_logger("creditq.shared")

Log = Any  # a bound structlog logger


class Context(Protocol):
    """The connections an ending uses. Read-only attributes, so that the worker's ``Runtime`` fits as it is."""

    @property
    def pool(self) -> asyncpg.Pool: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def redis(self) -> Redis | None: ...
    @property
    def http(self) -> httpx.AsyncClient | None: ...


@dataclass(frozen=True, slots=True)
class Connections:
    """A :class:`Context` made of the connections at hand (the API's cancel, the audit's repairs)."""

    pool: asyncpg.Pool
    settings: Settings
    redis: Redis | None
    http: httpx.AsyncClient | None


def bound(task: asyncpg.Record) -> Log:
    """The logger with the task's identity bound (every task line carries these)."""
    return log.bind(
        task_id=task["id"],
        account_id=task["account_id"],
        model=task["model"],
        provider_task_id=task["provider_task_id"],
    )


async def settle(
    ctx: Context,
    task: asyncpg.Record,
    status: str,
    tlog: Log | None = None,
    *,
    result: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> tuple[asyncpg.Record, bool]:
    """End the task with ``status`` (exactly once, one transaction), then, if this call ended it, free its tier
    slot and notify the client. Returns the task as it now is and whether this call ended it. Idempotent: a task
    that already ended is returned unchanged and nothing else happens. Raises Unavailable, NotFound."""
    row, changed = await tasks.finish(
        ctx.pool, task["id"], status, result=result, error_code=error_code, error_message=error_message
    )
    if changed:
        tlog = tlog if tlog is not None else bound(row)
        # The money lines and counters come from shared.ledger.reports, in finish itself.
        tlog.info(f"task.{status}", error_code=error_code, charged=row["charged"])
        await release_slot(ctx, row)
        await notify(ctx, row, tlog)
    return row, changed


async def expire(ctx: Context, task: asyncpg.Record, tlog: Log | None = None) -> tuple[asyncpg.Record, bool]:
    """The deadline's ending: fail a live task with ``provider_timeout`` and release its hold (:func:`settle`).
    Idempotent. Raises Unavailable, NotFound."""
    what = "started" if task["status"] == "queued" else "finished"
    return await settle(
        ctx,
        task,
        "failed",
        tlog,
        error_code="provider_timeout",
        error_message=f"the provider had not {what} the task by its deadline",
    )


async def cancel(
    pool: asyncpg.Pool,
    settings: Settings,
    task_id: str,
    account_id: str,
    redis: Callable[[], Awaitable[Redis]],
) -> asyncpg.Record:
    """The client's ending of a queued task (``POST /v1/jobs/{taskId}/cancel``): ``canceled`` and its hold
    released in one transaction (``ledger.tasks.cancel``), then its tier slot freed and the client's webhook
    scheduled, as :func:`settle` does (``redis``: how to get Redis for those two; unreachable, the slot frees
    itself at the task's deadline and the delivery sweep sends the webhook). Idempotent: canceling a canceled
    task returns it again (and frees and schedules again, both harmless). Raises NotFound (unknown or another
    account's), NotCancelable (the task left ``queued``), Unavailable (Postgres)."""
    task = await tasks.cancel(pool, task_id, account_id)
    try:
        ctx = Connections(pool, settings, await redis(), None)
    except Unavailable as e:
        log.warning("limits.release_failed", task_id=task_id, error=e.message)
        ctx = Connections(pool, settings, None, None)
    await release_slot(ctx, task)
    await notify(ctx, task, bound(task))
    return task


async def release_slot(ctx: Context, task: asyncpg.Record) -> None:
    """Free the task's tier slot (``shared.tier_limits.release``). Best effort, never raises: a slot must never hold up
    a settlement that already happened. Keyed by task, so calling it again for an ended task is harmless, and
    that is what frees a slot whose first release was lost to a crash."""
    if ctx.redis is None:
        return
    try:
        await tier_limits.release(ctx.redis, ctx.settings, task["account_id"], task["id"])
    except Exception as e:
        log.warning("limits.release_failed", task_id=task["id"], error=f"{type(e).__name__}: {e}")


async def notify(ctx: Context, task: asyncpg.Record, tlog: Log) -> None:
    """Schedule the client's webhook of the task's end. The delivery itself was written into the outbox with
    the ending, in the same transaction (migration 008's trigger on tasks); this only asks a worker to send it
    now (:mod:`worker.deliveries`). Best effort, never raises: without Redis, or if the hint is lost, the
    delivery sweep finds it in Postgres."""
    if not task["callback_url"] or not isinstance(ctx.redis, ArqRedis):
        return
    try:
        for webhook_id in await outbox.pending_for_task(ctx.pool, task["id"]):
            await queue.enqueue_delivery(ctx.redis, ctx.settings, webhook_id)
    except Exception as e:
        tlog.warning("delivery.enqueue_failed", error=f"{type(e).__name__}: {e}")
