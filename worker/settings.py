"""arq's worker settings for creditq, as a class (arq reads its attributes).

:func:`make` binds one to a :class:`~shared.config.Settings`; ``worker.settings.WorkerSettings`` (read from the
environment on first use) lets ``arq worker.settings.WorkerSettings`` run a worker too.

A step is short, so the job timeout is ``KIE_TIMEOUT`` plus a few seconds, and arq's in-progress lease (timeout
+ 10 s) is what a crashed worker's step waits before another worker may run it. ``max_tries`` is effectively
unbounded because every look at a task is a retry of the same job; the deadline, not a try count, ends a task.
Results are not kept: the task's state is in Postgres.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import structlog
from arq.worker import func

from shared import queue, redis_keys
from shared.config import Settings
from worker import deliveries, health, reporting, step, sweeper
from worker.runtime import close_runtime, open_runtime

log = structlog.get_logger("creditq.worker")

MAX_TRIES = 2**31 - 1
JOB_TIMEOUT_SLACK = 3.0  # arq's timeout beyond the step's own budget: the step ends first, cleanly


def job_timeout(settings: Settings) -> float:
    """arq's timeout for one step."""
    return step.step_budget(settings.kie_timeout) + JOB_TIMEOUT_SLACK


async def startup(ctx: dict[str, Any]) -> None:
    """arq ``on_startup``: open Postgres (raises Unavailable), build the runtime, start the background loops."""
    settings: Settings = ctx["settings"]
    rt = await open_runtime(settings, ctx["redis"], ctx.get("pool"))
    rt.background.append(asyncio.create_task(sweeper.sweeper_loop(rt), name="creditq-sweeper"))
    rt.background.append(asyncio.create_task(deliveries.sweep_loop(rt), name="creditq-delivery-sweep"))
    rt.background.append(asyncio.create_task(sweeper.credit_poll_loop(rt), name="creditq-credit-poll"))
    rt.background.append(asyncio.create_task(sweeper.running_count_loop(rt), name="creditq-running-count"))
    rt.background.append(asyncio.create_task(reporting.metrics_push_loop(rt), name="creditq-metrics"))
    rt.background.append(asyncio.create_task(reporting.provider_credit_loop(rt), name="creditq-credit-balance"))
    rt.background.append(asyncio.create_task(reporting.audit_loop(rt), name="creditq-audit"))
    rt.background.append(asyncio.create_task(health.startup_probe(rt), name="creditq-provider-probe"))
    ctx["rt"] = rt
    log.info(
        "worker.started",
        queue=settings.queue_name,
        max_jobs=settings.worker_concurrency,
        callbacks=settings.callbacks_enabled,
        sweep_seconds=settings.sweep_seconds,
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq ``on_shutdown``: stop the loops, close the HTTP client and the pool. Idempotent."""
    rt = ctx.pop("rt", None)
    if rt is not None:
        await close_runtime(rt)
    log.info("worker.stopped")


def make(settings: Settings) -> type:
    """A WorkerSettings class bound to ``settings`` (``ctx['settings']`` carries them to the startup hook)."""
    timeout = job_timeout(settings)

    class WorkerSettings:
        """arq reads these attributes (``arq.worker.create_worker``)."""

        functions = (
            func(step.step, name=queue.STEP_FUNCTION, max_tries=MAX_TRIES, timeout=timeout, keep_result=0),
            func(
                deliveries.deliver,
                name=queue.DELIVER_FUNCTION,
                max_tries=MAX_TRIES,
                timeout=deliveries.LEASE_SECONDS,
                keep_result=0,
            ),
        )
        queue_name = settings.queue_name
        redis_settings = queue.redis_settings(settings)
        on_startup = startup
        on_shutdown = shutdown
        ctx: ClassVar[dict[str, Any]] = {"settings": settings}
        max_jobs = settings.worker_concurrency
        job_timeout = timeout
        keep_result = 0
        max_tries = MAX_TRIES
        # SIGTERM: stop taking jobs, let the steps in flight end (they are short), then exit.
        job_completion_wait = int(timeout) + 1
        # How often an idle worker looks for due jobs: a callback's poke waits for the next look, so this is most
        # of the callback-to-settled time (0.2 s gave a p50 of ~200 ms, 0.05 s gives ~55 ms); 20 looks a second
        # cost an idle worker about 1 % of a core (BENCHMARKS.md, CPU while waiting).
        poll_delay = 0.05
        health_check_key = redis_keys.worker_health_check(settings.queue_name)
        health_check_interval = 30

    return WorkerSettings


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        return make(Settings.from_env())
    raise AttributeError(name)
