"""worker.main's arq worker claims due jobs in one Redis round trip per poll: every job arq queued runs exactly
once across workers racing for them, a job in progress elsewhere is left alone, and a job not yet due waits."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import func

from shared import queue
from shared.config import Settings
from worker.main import _Worker


@pytest.fixture
def own(settings: Settings) -> Settings:
    return dataclasses.replace(settings, queue_name=f"{settings.queue_name}:claims:{uuid.uuid4().hex[:8]}")


def _worker(redis: ArqRedis, settings: Settings, runs: list[str], max_jobs: int) -> _Worker:
    async def step(ctx: dict[str, Any], task_id: str, poked: bool = False) -> None:
        runs.append(task_id)
        await asyncio.sleep(0.002)  # long enough for the other worker's polls to meet jobs in progress

    return _Worker(
        functions=[func(step, name=queue.STEP_FUNCTION)],
        redis_pool=redis,
        queue_name=settings.queue_name,
        burst=True,
        poll_delay=0.01,
        max_jobs=max_jobs,
        keep_result=0,
        handle_signals=False,
    )


async def test_racing_workers_run_every_job_once(own: Settings) -> None:
    producer = await queue.connect(own)
    ids = [f"t{i}" for i in range(400)]
    try:
        for i in ids:
            assert await queue.enqueue(producer, own, i)
    finally:
        await producer.aclose()
    runs: list[str] = []
    workers = [_worker(await queue.connect(own), own, runs, max_jobs=m) for m in (7, 30, 200)]
    try:
        await asyncio.wait_for(asyncio.gather(*(w.main() for w in workers)), 60)
    finally:
        for w in workers:
            await w.close()
    assert sorted(runs) == sorted(ids)  # all of them, none twice
    assert sum(w.jobs_complete for w in workers) == len(ids)
    assert all(w.jobs_complete > 0 for w in workers)  # they did race


async def test_a_job_in_progress_elsewhere_or_not_due_is_left(own: Settings) -> None:
    redis = await queue.connect(own)
    runs: list[str] = []
    worker = _worker(redis, own, runs, max_jobs=10)
    try:
        await queue.enqueue(redis, own, "busy")
        await queue.enqueue(redis, own, "free")
        await queue.enqueue(redis, own, "later", defer_by=60)
        busy = in_progress_key_prefix + "task:busy"
        await redis.psetex(busy, 60_000, b"1")  # another worker runs it
        await worker.start_jobs([b"task:busy", b"task:free", b"task:later", b"task:gone"])
        await asyncio.gather(*worker.tasks.values())
        assert runs == ["free"]
        assert worker.job_counter == 0
        await redis.delete(busy)
        await worker.start_jobs([b"task:busy", b"task:later"])
        await asyncio.gather(*worker.tasks.values())
        assert runs == ["free", "busy"]
        # A job of this worker's own that is running is not claimed again however often it is listed.
        runs.clear()
        await queue.enqueue(redis, own, "mine")
        gate = asyncio.Event()

        async def slow(ctx: dict[str, Any], task_id: str, poked: bool = False) -> None:
            runs.append(task_id)
            await gate.wait()

        worker.functions[queue.STEP_FUNCTION] = dataclasses.replace(
            worker.functions[queue.STEP_FUNCTION], coroutine=slow
        )
        await worker.start_jobs([b"task:mine"])
        await asyncio.sleep(0.05)
        await worker.start_jobs([b"task:mine"])
        gate.set()
        await asyncio.gather(*worker.tasks.values())
        assert runs == ["mine"]
    finally:
        await worker.close()


async def test_free_slots_are_filled_past_jobs_other_workers_hold(own: Settings) -> None:
    """The candidates are looked at a few per free slot at a time: when the first ones are all in progress
    elsewhere, the next ones are claimed, up to the free slots and no more."""
    redis = await queue.connect(own)
    runs: list[str] = []
    worker = _worker(redis, own, runs, max_jobs=2)
    try:
        ids = [f"j{i:02d}" for i in range(40)]
        for i in ids:
            await queue.enqueue(redis, own, i)
        for i in ids[:30]:
            await redis.psetex(in_progress_key_prefix + f"task:{i}", 60_000, b"1")
        await worker.start_jobs([f"task:{i}".encode() for i in ids])
        assert worker.job_counter == 2
        await asyncio.gather(*worker.tasks.values())
        assert runs == ["j30", "j31"]
    finally:
        await worker.close()
