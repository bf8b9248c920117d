"""Background loops of every worker process: the sweeper and the credit poll.

The sweeper is what makes Redis only a hint. Every ``CREDITQ_SWEEP_SECONDS`` one worker (whoever takes the lock
``{queue}:sweeper``, ``SET NX PX``) reads Postgres for live tasks whose next check is overdue by more than the
interval, re-enqueues them (a no-op for a task whose job still exists) and ends those past their deadline (after
one last status query, as the task's own step does). A
loop in ``on_startup`` rather than an arq cron job, because arq's cron fires only on wall-clock seconds, which
cannot express an arbitrary interval.

The credit poll closes the out-of-credits circuit: while it is open, one worker at a time asks the provider for
its balance every few seconds and closes the circuit as soon as there is some.
"""

from __future__ import annotations

import asyncio
import random

import structlog
from arq import Retry

from shared import metrics, queue, redis_keys
from shared.ledger import money, tasks
from worker import interval_lock, reporting, step
from worker.runtime import Runtime

log = structlog.get_logger("creditq.worker")

CREDIT_POLL_SECONDS = 3.0
EXPIRY_BATCH = 500  # accounts per expiry transaction


async def sweep(rt: Runtime) -> tuple[int, int]:
    """One sweep: expire lots past their expiry, re-enqueue overdue live tasks and settle expired ones. Returns
    (requeued, expired) tasks.

    Idempotent (an expired lot is expired once; enqueue is a no-op for an existing job; settlement is exactly
    once). Raises Unavailable or redis errors; the loop logs them and tries again next interval.
    """
    try:
        await expire_lots(rt)
    except Exception as e:  # the tasks' recovery below must not wait for the lots' expiry
        log.warning("sweep.expire_failed", error=f"{type(e).__name__}: {e}")
    requeued = expired = 0
    for row in await tasks.overdue(rt.pool, rt.settings.sweep_seconds):
        if row["expired"]:
            task = await tasks.get(rt.pool, row["id"])
            if task["status"] not in tasks.LIVE:
                continue
            try:
                # The same ending as the task's own step, last look included: the sweep may reach a task whose
                # callback was lost before its step does, and must not refund a generation that succeeded.
                if await step.end_overdue(rt, task, may_wait=True) == "failed":
                    expired += 1
            except Retry:
                pass  # the provider could not say yet: the task's step (or the next sweep) ends it
        elif await queue.enqueue(rt.redis, rt.settings, row["id"]):
            requeued += 1
    if requeued or expired:
        metrics.SWEEPER_RECOVERIES.labels("requeued").inc(requeued)
        metrics.SWEEPER_RECOVERIES.labels("expired").inc(expired)
        log.info("sweep.done", requeued=requeued, expired=expired)
    return requeued, expired


async def expire_lots(rt: Runtime) -> int:
    """Credits whose lot has expired leave the balance (``expiration`` entries), in batches of accounts until
    none is left, so that every lot is expired within a sweep interval of its expiry. Returns the entries
    written. Raises what the pool raises."""
    total = 0
    while True:
        n = await money.expire_lots(rt.pool, EXPIRY_BATCH)
        total += n
        if n == 0:  # every due account writes at least one entry, so each call until then makes progress
            break
    if total:
        metrics.LOTS_EXPIRED.inc(total)
    return total


async def sweeper_loop(rt: Runtime) -> None:
    """Run :func:`sweep` about every ``CREDITQ_SWEEP_SECONDS`` across all workers, until cancelled."""
    interval = rt.settings.sweep_seconds
    key = redis_keys.sweeper_lock(rt.settings.queue_name)
    await interval_lock.once_per_interval(rt, key, interval, min(1.0, interval / 4), sweep, "sweep.failed")


async def running_count_loop(rt: Runtime) -> None:
    """Refresh ``rt.running_estimate`` (tasks running at the provider, all workers) every sweep interval, for the
    poll schedule's share of the provider's query budget. Runs until cancelled; an outage keeps the last value."""
    while True:
        try:
            rt.running_estimate = await tasks.count_running(rt.pool)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("running_count.failed", error=f"{type(e).__name__}: {e}")
        await asyncio.sleep(rt.settings.sweep_seconds)


async def credit_poll_loop(rt: Runtime) -> None:
    """While a provider key's circuit is open for lack of credits, one worker at a time polls that key's
    balance every few seconds and closes its circuit once there are credits. Circuits opened for a bad key
    (401) or a usage cap (433) are left to their cool-down: the next create probes them. Runs until cancelled.
    (The balance shown on /metrics is polled, circuit or not, by :func:`worker.reporting.provider_credit_loop`.)"""
    lock = redis_keys.credit_poll_lock(rt.settings.queue_name)
    while True:
        await asyncio.sleep(CREDIT_POLL_SECONDS * random.uniform(0.8, 1.2))
        try:
            open_keys = []
            for key in rt.keys.keys:
                info = await key.circuit.info()
                if info is not None and info.get("reason") == "provider_out_of_credits":
                    open_keys.append(key)
            if not open_keys:
                continue
            if not await rt.redis.set(lock, "1", nx=True, px=int(CREDIT_POLL_SECONDS * 900)):
                continue
            for key in open_keys:
                if key is rt.keys.first:
                    credits = await reporting.poll_credit_balance(rt)  # also recorded for /metrics
                else:
                    try:
                        credits = await rt.provider.credits(key.secret)
                    except Exception as e:
                        log.warning("provider.credits_failed", provider_key=key.id, error=f"{type(e).__name__}: {e}")
                        credits = None
                if credits is None:
                    continue
                if credits > 0:
                    if await key.circuit.close():
                        log.info("circuit.closed", provider_key=key.id, provider_credits=credits)
                else:
                    await key.circuit.open("provider_out_of_credits", step.CIRCUIT_COOLDOWN)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # Redis down: the next tick tries again
            log.warning("credit_poll.failed", error=f"{type(e).__name__}: {e}")
