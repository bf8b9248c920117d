"""``creditq worker``: run one arq worker until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker, get_kwargs
from redis.exceptions import RedisError

from shared import db, fleet_metrics, queue
from shared.config import Settings
from shared.errors import Unavailable
from shared.lua import Script
from worker.settings import make

log = structlog.get_logger("creditq.worker")

T = TypeVar("T")

# A worker started before Postgres or Redis (a reboot, `docker compose up`) waits for them: 1 s, 2 s, 4 s ... 30 s.
START_BACKOFF_FIRST = 1.0
START_BACKOFF_CAP = 30.0


async def wait_for(what: str, connect: Callable[[], Awaitable[T]], first: float = START_BACKOFF_FIRST) -> T:
    """``connect()`` until it succeeds, sleeping with exponential backoff (jittered, capped at
    :data:`START_BACKOFF_CAP`) after each Unavailable and logging one warning line per failed attempt. Other
    errors (a database that does not exist is Unavailable too, but says so) propagate at once: they are not
    outages. Runs until it succeeds or the process is stopped."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await connect()
        except Unavailable as e:
            if "does not exist" in e.message:
                raise
            delay = min(START_BACKOFF_CAP, first * 2 ** (attempt - 1)) * random.uniform(0.9, 1.1)
            log.warning("worker.waiting", waiting_for=what, attempt=attempt, retry_in=round(delay, 1), error=e.message)
            await asyncio.sleep(delay)


REDIS_RETRY = (1.0, 3.0)  # seconds between two looks at Redis while it is unreachable

# arq's claim of a due job, for a whole batch of them in one round trip. KEYS: the queue, then the in-progress key
# of each job id of ARGV[4...]. ARGV: now (ms), the lease (ms), how many to claim at most. A job is claimed as
# arq's start_jobs claims it (WATCH in-progress / EXISTS / ZSCORE / MULTI PSETEX EXEC): still in the queue, due,
# and not in progress anywhere; its in-progress key is then set for the lease. Returns id, score, id, score...
_CLAIM_JOBS = """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV do
    if #out >= 2 * limit then
        break
    end
    local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if score and tonumber(score) <= now and redis.call('EXISTS', KEYS[i - 2]) == 0 then
        redis.call('PSETEX', KEYS[i - 2], ARGV[2], '1')
        out[#out + 1] = ARGV[i]
        out[#out + 1] = score
    end
end
return out
"""
_claim_jobs = Script(_CLAIM_JOBS)


class _Worker(Worker):
    """arq's worker with two changes, both overriding its private loop (check them on an arq upgrade; the lock
    pins the version):

    - Redis going away under its poll loop is waited out instead of ending the process (arq's own loop lets the
      connection error escape and the worker exits: found by the soak, docs/SOAK.md). Steps in flight handle
      their own Redis errors (they re-schedule); the sweeper re-enqueues from Postgres whatever a Redis restart
      lost.
    - Due jobs are claimed in one round trip per poll (:data:`_CLAIM_JOBS`; a few more when other workers hold
      the first ones), not four sequential ones per job: with two jobs per settled task that was the largest
      part of arq's own cost (BENCHMARKS.md)."""

    _redis_down_since: float | None = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim up to the free slots' worth of the due ``job_ids`` (those this worker runs already skipped),
        and run each claimed job as arq does. Raises redis errors (the poll loop waits them out)."""
        ids = [i for i in (j.decode() for j in job_ids) if i not in self.tasks]
        lease_ms = int(self.in_progress_timeout_s * 1000)
        # A few candidates per free slot at a time: a backlog lists arq's queue_read_limit ids (1,000) at every
        # poll, most of them when only a slot or two are free; the next few are looked at only if these were
        # taken by other workers.
        while ids and (free := self.max_jobs - self.job_counter) > 0:
            chunk, ids = ids[: 2 * free + 8], ids[2 * free + 8 :]
            keys = [self.queue_name, *(in_progress_key_prefix + i for i in chunk)]
            claimed = await _claim_jobs(self.pool, keys, [timestamp_ms(), lease_ms, free, *chunk])
            for raw_id, raw_score in zip(claimed[::2], claimed[1::2], strict=True):
                job_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                await self.sem.acquire()  # never waits: at most the free slots were claimed
                self.job_counter += 1
                t = self.loop.create_task(self.run_job(job_id, int(float(raw_score))))
                t.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                self.tasks[job_id] = t

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as e:
            loop = asyncio.get_running_loop()
            if self._redis_down_since is None:
                self._redis_down_since = loop.time()
                log.warning("worker.redis_unavailable", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(random.uniform(*REDIS_RETRY))
            return
        if self._redis_down_since is not None:
            down = asyncio.get_running_loop().time() - self._redis_down_since
            log.info("worker.redis_back", down_seconds=round(down, 1))
            self._redis_down_since = None


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (a dependency on Linux): +16 % settled tasks/s in BENCHMARKS.md's variants run."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(settings: Settings) -> int:
    """Run a worker in this process until a signal; returns the exit status (0 after a clean stop).

    Postgres and Redis are reached before any job is taken; while either is unreachable the worker waits and
    retries with backoff (:func:`wait_for`, one log line per attempt). Logging must already be configured.
    """
    if logging.getLogger().level > logging.DEBUG:
        # arq's two lines per step would drown the task lines; its warnings and errors still show.
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        redis = loop.run_until_complete(wait_for("redis", lambda: queue.connect(settings)))
        try:
            pool = loop.run_until_complete(wait_for("postgres", lambda: db.create_pool(settings)))
        except BaseException:
            loop.run_until_complete(redis.aclose())
            raise
        # What arq.worker.create_worker does, with our class.
        kwargs: dict[str, Any] = {
            **get_kwargs(make(settings)),
            "redis_pool": redis,
            "ctx": {"settings": settings, "pool": pool},
        }
        worker = _Worker(**kwargs)
        try:
            worker.run()  # closes the Redis pool and runs on_shutdown
        finally:
            loop.run_until_complete(pool.close())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return 0


HEALTHY_WITHIN_SECONDS = 30.0


def check(settings: Settings, within: float = HEALTHY_WITHIN_SECONDS) -> int:
    """``creditq worker --check``: 0 when a worker on this host (``<hostname>:<pid>`` in the metrics set) pushed
    its snapshot to Redis within ``within`` seconds (the push runs every few seconds while its event loop
    turns), else 1 with one line saying why. For a container's healthcheck. Reads only."""
    import socket
    import time

    async def probe() -> int:
        try:
            redis = await queue.connect(settings)
        except Unavailable as e:
            print(f"unhealthy: {e.message}")
            return 1
        try:
            ids = await redis.zrangebyscore(fleet_metrics.workers_key(settings), time.time() - within, "+inf")
        finally:
            await redis.aclose()
        host = socket.gethostname() + ":"
        mine = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        if any(i.startswith(host) for i in mine):
            print("healthy")
            return 0
        print(f"unhealthy: no worker on {host[:-1]} reported within {within:.0f} s")
        return 1

    return asyncio.run(probe())
