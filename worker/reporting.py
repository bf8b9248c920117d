"""The worker's reporting loops, started in arq's ``on_startup`` beside the sweeper.

- :func:`metrics_push_loop`: every ``shared.metrics.PUSH_SECONDS`` (jittered) this process writes a snapshot of
  its metrics to Redis, where the API's ``/metrics`` serves it with a ``worker`` label (the choice is explained
  in :mod:`shared.metrics`). A failed push is retried at the next tick; nothing else waits for it.
- :func:`provider_credit_loop`: every :data:`CREDIT_BALANCE_SECONDS`, one worker of the fleet (whoever takes
  the lock ``{CREDITQ_QUEUE}:creditbalance``) asks the provider for its credit balance and records it in Redis
  for ``creditq_provider_credits`` and the operator's page. The first poll is at start, so a new deployment
  shows a balance at once. (The sweeper module's ``credit_poll_loop`` is another thing: it polls every few
  seconds, only while the out-of-credits circuit is open, to close it.)
- :func:`audit_loop`: every :data:`AUDIT_SECONDS`, one worker of the fleet (lock ``{CREDITQ_QUEUE}:auditrun``)
  runs the read-only audit of :mod:`shared.ledger.audit` and records its problem counts in Redis, so that
  ``creditq_audit_problems{kind}`` can page someone without Prometheus running an audit on every scrape. It
  repairs nothing: repairs are an operator's decision (``creditq audit --fix``).
"""

from __future__ import annotations

import asyncio
import random
import time

import structlog

from shared import metrics, redis_keys
from shared.ledger.audit import audit
from worker import health, interval_lock
from worker.runtime import Runtime

log = structlog.get_logger("creditq.worker")

CREDIT_BALANCE_SECONDS = 60.0
# The audit reads every ledger entry: every few minutes is enough to page on a broken invariant.
AUDIT_SECONDS = 300.0
FAILURE_LOG_SECONDS = 60.0  # a Redis outage would otherwise log a line per push


async def metrics_push_loop(rt: Runtime, worker_id: str | None = None) -> None:
    """Push this process's metrics snapshot every few seconds, until cancelled."""
    wid = worker_id or metrics.worker_id()
    last_warning = 0.0
    while True:
        try:
            await metrics.push_snapshot(rt.redis, rt.settings, wid)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # an outage must not kill the loop: the next tick tries again
            if time.monotonic() - last_warning > FAILURE_LOG_SECONDS:
                last_warning = time.monotonic()
                log.warning("metrics.push_failed", worker=wid, error=f"{type(e).__name__}: {e}")
        await asyncio.sleep(metrics.PUSH_SECONDS * random.uniform(0.9, 1.1))


async def poll_credit_balance(rt: Runtime) -> float | None:
    """One poll of the provider's balance, recorded in Redis and counted. Returns the balance, or None when the
    provider or Redis could not be asked (logged; the next interval tries again). Never raises but
    CancelledError."""
    try:
        credits = await rt.provider.credits()
    except asyncio.CancelledError:
        raise
    except Exception as e:
        metrics.CREDIT_POLLS.labels("error").inc()
        log.warning("provider.credits_failed", error=f"{type(e).__name__}: {e}")
        if health.is_connection_failure(e):
            await health.note_unreached(rt, e)
        return None
    metrics.CREDIT_POLLS.labels("ok").inc()
    await health.note_reached(rt)
    try:
        await metrics.record_provider_credits(rt.redis, rt.settings, credits)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        log.warning("provider.credits_not_recorded", error=f"{type(e).__name__}: {e}")
    log.info("provider.credits", provider_credits=credits)
    return credits


async def provider_credit_loop(rt: Runtime, interval: float = CREDIT_BALANCE_SECONDS) -> None:
    """Poll the provider's balance about every ``interval`` seconds across the fleet, until cancelled."""
    key = redis_keys.credit_balance_lock(rt.settings.queue_name)
    await interval_lock.once_per_interval(
        rt, key, interval, min(5.0, interval / 4), poll_credit_balance, "provider.credits_failed"
    )


async def run_audit(rt: Runtime) -> int:
    """Run the audit once (read-only) and record its summary in Redis; returns the number of problems. Raises
    Unavailable and redis errors."""
    report = await audit(rt.pool, rt.settings.sweep_seconds)
    await metrics.record_audit(rt.redis, rt.settings, (p.kind for p in report.problems))
    if report.ok:
        log.info("audit.clean")
    else:
        kinds = sorted({p.kind for p in report.problems})
        log.warning("audit.problems", problems=len(report.problems), kinds=kinds)
    return len(report.problems)


async def audit_loop(rt: Runtime, interval: float = AUDIT_SECONDS) -> None:
    """Run :func:`run_audit` about every ``interval`` seconds across the fleet, until cancelled."""
    key = redis_keys.audit_lock(rt.settings.queue_name)
    await interval_lock.once_per_interval(rt, key, interval, min(10.0, interval / 4), run_audit, "audit.failed")
