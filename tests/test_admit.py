"""tier_limits.admit: the submit's second Redis round trip (limit bookkeeping + the arq job written by a Lua script),
read back by arq itself: ``Job.info()`` decodes it and a real arq ``Worker`` runs it, once."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus
from arq.worker import Worker, func

from shared import queue, redis_keys, tier_limits
from shared.config import Settings
from shared.pricing import Tier

UNLIMITED = Tier("unlimited", 0, 0, 0)
FREE_LIKE = Tier("limited", 0, 10, 2)


@pytest.fixture
async def arq_redis(settings: Settings) -> AsyncIterator[tuple[ArqRedis, Settings]]:
    own = dataclasses.replace(settings, queue_name=f"{settings.queue_name}:admit:{uuid.uuid4().hex[:8]}")
    redis = await queue.connect(own)
    yield redis, own
    await redis.aclose()


async def _run_worker(redis: ArqRedis, settings: Settings) -> list[str]:
    """Run a real arq worker in burst mode on the queue; the task ids its ``step`` was called with."""
    seen: list[str] = []

    async def step(ctx: dict[str, Any], task_id: str, poked: bool = False) -> None:
        seen.append(task_id)

    worker = Worker(
        functions=[func(step, name=queue.STEP_FUNCTION)],
        redis_pool=redis,
        queue_name=settings.queue_name,
        burst=True,
        poll_delay=0.05,
        keep_result=0,
        handle_signals=False,
    )
    try:
        await worker.main()
    finally:
        await worker.close()
    return seen


def _tier_check() -> None:
    assert tier_limits.limited(FREE_LIKE, "image")
    assert not tier_limits.limited(UNLIMITED, "image")
    assert tier_limits.limited(Tier("cool", 0, 0, 0, {"video": 180}), "video")
    assert not tier_limits.limited(Tier("cool", 0, 0, 0, {"video": 180}), "image")


async def test_an_admitted_job_is_arqs_own(arq_redis: tuple[ArqRedis, Settings]) -> None:
    redis, settings = arq_redis
    _tier_check()
    account, task_id = f"acct_{uuid.uuid4().hex}", f"task_{uuid.uuid4().hex}"
    job = queue.step_job(redis, settings, task_id)
    assert await tier_limits.admit(redis, settings, account, task_id, 60, job, reserved=False)
    # A second admit (a retry) neither queues it again nor counts it twice.
    assert not await tier_limits.admit(redis, settings, account, task_id, 60, job, reserved=False)
    usage = await tier_limits.usage(redis, settings, account, UNLIMITED)
    assert usage["dailyJobs"]["used"] == 1
    assert usage["concurrentJobs"]["used"] == 1

    info = await Job(redis_keys.step_job_id(task_id), redis, _queue_name=settings.queue_name).info()
    assert info is not None
    assert (info.function, info.args, info.kwargs) == (queue.STEP_FUNCTION, (task_id,), {})
    assert not info.job_try  # arq counts the first try itself
    assert (
        await Job(redis_keys.step_job_id(task_id), redis, _queue_name=settings.queue_name).status() == JobStatus.queued
    )
    # enqueue() (arq's enqueue_job) sees the job as queued already: the same key.
    assert not await queue.enqueue(redis, settings, task_id)

    assert await _run_worker(redis, settings) == [task_id]
    assert await redis.zcard(settings.queue_name) == 0


async def test_admit_confirms_a_reservation(arq_redis: tuple[ArqRedis, Settings]) -> None:
    redis, settings = arq_redis
    account = f"acct_{uuid.uuid4().hex}"
    tasks = [f"task_{uuid.uuid4().hex}" for _ in range(2)]
    for task_id in tasks:
        await tier_limits.reserve(redis, settings, account, FREE_LIKE, "image", task_id, 60)
    pending_key = redis_keys.limits_pending(settings.queue_name, account)
    assert await redis.zcard(pending_key) == 2
    for task_id in tasks:
        job = queue.step_job(redis, settings, task_id)
        assert await tier_limits.admit(redis, settings, account, task_id, 60, job, reserved=True)
    assert await redis.zcard(pending_key) == 0
    # Confirmed, not counted again: the reservations already counted (2 live, 2 today); the tier allows 2 at once.
    usage = await tier_limits.usage(redis, settings, account, FREE_LIKE)
    assert (usage["dailyJobs"]["used"], usage["concurrentJobs"]["used"]) == (2, 2)
    with pytest.raises(Exception, match="2 jobs at once"):
        await tier_limits.reserve(redis, settings, account, FREE_LIKE, "image", f"task_{uuid.uuid4().hex}", 60)
    assert sorted(await _run_worker(redis, settings)) == sorted(tasks)
