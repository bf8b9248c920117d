"""Client webhooks: the attempts of the outbox's deliveries (arq job ``deliver``) and their sweep.

A delivery row is written by Postgres itself in the transaction that ends the task (migration 008's trigger);
here it is sent. One attempt:

1. read the delivery; not pending → done; not due yet → done (the job that set the later time owns it);
2. claim it in Postgres for ``TIMEOUT_SECONDS`` + a margin (another worker's live attempt → look again when its
   lease lapses: a worker killed mid-attempt delays the delivery, never loses it);
3. check the URL again and resolve it now (:func:`shared.callback_urls.target`), connect to that checked address
   (no second lookup), sign with every secret of the account that still signs, POST, follow no redirect;
4. 2xx → delivered; 410 → failed, stopped; anything else (an error, a timeout, a refused URL) → pending again
   after the next delay of ``CREDITQ_WEBHOOK_RETRY_SECONDS`` (the job retries itself then), failed once the
   schedule is spent.

Redis only schedules: :func:`sweep` re-enqueues, from Postgres, every pending delivery overdue by more than the
sweep interval (a flushed Redis, a lost job), so none is lost. Delivery is at least once: the receiver dedups by
``webhook-id``, which is the same for every attempt.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from arq import Retry
from redis.exceptions import RedisError

from shared import callback_urls, db, queue, redis_keys, webhooks
from shared.errors import NotFound, Unavailable
from shared.ledger import tasks
from shared.ledger import webhooks as outbox
from worker import interval_lock
from worker.runtime import Runtime

log = structlog.get_logger("creditq.worker")

LEASE_MARGIN = 3.0  # a claim outlives the attempt's own timeout by this much (the recording of its outcome)
LEASE_SECONDS = webhooks.TIMEOUT_SECONDS + LEASE_MARGIN  # also arq's timeout of one attempt
_OUTAGES: tuple[type[BaseException], ...] = (Unavailable, RedisError, *db.CONNECTION_ERRORS)


async def deliver(ctx: dict[str, Any], webhook_id: str) -> str:
    """arq job ``deliver``: one attempt of the delivery (module docstring). Idempotent and safe to run twice at
    once (the claim). Raises only ``arq.Retry``: the next attempt of a failed delivery, or a look again after an
    outage. Returns what happened, for arq's log line."""
    rt: Runtime = ctx["rt"]
    try:
        outcome, again_in = await attempt(rt, webhook_id)
    except _OUTAGES as e:
        delay = random.uniform(2.0, 6.0)
        log.warning("delivery.unavailable", webhook_id=webhook_id, error=f"{type(e).__name__}: {e}")
        raise Retry(defer=delay) from None
    if again_in is not None:
        raise Retry(defer=again_in)
    return outcome


async def attempt(rt: Runtime, webhook_id: str) -> tuple[str, float | None]:
    """One attempt: (what happened, seconds until this job should look again or None). Raises Unavailable and
    connection errors (Postgres down)."""
    d = await outbox.get(rt.pool, webhook_id)
    if d is None:
        return "unknown", None
    if d["status"] != "pending":
        return str(d["status"]), None
    now = datetime.now(UTC)
    if (d["next_attempt_at"] - now).total_seconds() > 1.0:
        return "not_due", None
    claimed = await outbox.claim(rt.pool, webhook_id, LEASE_SECONDS)
    if claimed is None:
        fresh = await outbox.get(rt.pool, webhook_id)
        if fresh is None or fresh["status"] != "pending" or fresh["locked_until"] is None:
            return "taken", None
        return "busy", max(1.0, (fresh["locked_until"] - now).total_seconds() + 1.0)
    return await _send(rt, claimed)


async def _send(rt: Runtime, d: asyncpg.Record) -> tuple[str, float | None]:
    dlog = log.bind(webhook_id=d["id"], task_id=d["task_id"], attempt=d["attempts"])
    try:
        task = await tasks.get(rt.pool, d["task_id"])
    except NotFound:
        await outbox.record(rt.pool, d["id"], "failed", None, "the task no longer exists")
        return "failed", None
    signing = await outbox.secrets(rt.pool, d["account_id"], webhooks.new_secret())
    body = webhooks.event_body(d["type"], task["finished_at"].isoformat(), tasks.task_view(task))
    status: int | None = None
    error: str | None = None
    started = time.monotonic()
    try:
        target = await callback_urls.target(d["url"], rt.settings.allow_private_callbacks, rt.resolver)
        headers = webhooks.headers([s["secret"] for s in signing], d["id"], int(time.time()), body)
        request = callback_urls.pinned_request(rt.webhook_http, target, body, headers)
        async with asyncio.timeout(webhooks.TIMEOUT_SECONDS):
            # Streamed and closed unread: a receiver's answer body is of no interest, however large.
            response = await rt.webhook_http.send(request, stream=True)
            await response.aclose()
        status = response.status_code
    except callback_urls.Refused as e:
        error = f"refused: the URL {e}"
    except TimeoutError:
        error = f"no answer within {webhooks.TIMEOUT_SECONDS:g} s"
    except Exception as e:  # any transport error is a failed attempt, retried on the schedule
        error = f"{type(e).__name__}: {e}"[:300]
    took = round(time.monotonic() - started, 3)
    if status is not None and 200 <= status < 300:
        await outbox.record(rt.pool, d["id"], "delivered", status, None)
        dlog.info("delivery.delivered", http=status, seconds=took)
        return "delivered", None
    if status == 410:
        await outbox.record(rt.pool, d["id"], "failed", status, "410 Gone: the receiver asked to stop")
        dlog.info("delivery.stopped", http=status)
        return "stopped", None
    if status is not None:
        error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
    delay = webhooks.retry_delay(int(d["attempts"]), rt.settings.webhook_retry_seconds)
    if delay is None:
        await outbox.record(rt.pool, d["id"], "failed", status, error)
        dlog.warning("delivery.failed", http=status, error=error, attempts=d["attempts"])
        return "failed", None
    await outbox.record(rt.pool, d["id"], "pending", status, error, delay)
    dlog.info("delivery.retry", http=status, error=error, retry_in=round(delay, 1))
    return "pending", delay


async def sweep(rt: Runtime) -> int:
    """Re-enqueue every pending delivery overdue by more than the sweep interval and held by no attempt: its job
    may be lost (a flushed Redis) or stuck "in progress" with a killed worker. Returns how many were enqueued (a
    no-op for one already swept at its attempt count). A second job for a delivery is harmless: attempts are
    claimed in Postgres, and a job that finds nothing due ends. Raises Unavailable, redis errors."""
    enqueued = 0
    for webhook_id, attempts in await outbox.overdue(rt.pool, rt.settings.sweep_seconds):
        if await queue.enqueue_delivery(rt.redis, rt.settings, webhook_id, swept_at_attempt=attempts):
            enqueued += 1
    if enqueued:
        log.info("delivery.sweep", requeued=enqueued)
    return enqueued


async def sweep_loop(rt: Runtime) -> None:
    """Run :func:`sweep` about every ``CREDITQ_SWEEP_SECONDS`` across all workers, until cancelled."""
    interval = rt.settings.sweep_seconds
    key = redis_keys.delivery_sweep_lock(rt.settings.queue_name)
    await interval_lock.once_per_interval(rt, key, interval, min(1.0, interval / 4), sweep, "delivery.sweep_failed")
