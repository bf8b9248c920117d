"""The arq queue: how the API and the sweeper say "look at task X soon".

Redis is only a hint (docs/ARCHITECTURE.md, principle 1): a task whose queue entry is lost is found again in Postgres by the
sweeper. Each task has one arq job id, ``task:<taskId>``, so enqueueing a task that is already queued is a no-op;
a callback's "look now" uses a second id, ``poke:<taskId>``, so it is never swallowed by the deferred poll job.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.exceptions import RedisError

from shared.config import Settings
from shared.errors import Unavailable

STEP_FUNCTION = "step"
# How far in the past a poke is scored (arq keeps a job's key for 1 day past its score, so well under that).
POKE_HEAD_START = timedelta(minutes=10)


def job_id(task_id: str) -> str:
    return f"task:{task_id}"


def poke_id(task_id: str) -> str:
    return f"poke:{task_id}"


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings from REDIS_URL (short timeouts: an outage must be an error, not a hang)."""
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.conn_timeout = 2
    rs.conn_retries = 0
    return rs


async def connect(settings: Settings) -> ArqRedis:
    """An arq Redis pool. Raises Unavailable naming REDIS_URL if Redis cannot be reached."""
    try:
        return await create_pool(redis_settings(settings), default_queue_name=settings.queue_name)
    except (RedisError, OSError) as e:
        raise Unavailable(f"Redis is unreachable at REDIS_URL ({settings.redis_url}): {e}") from e


async def enqueue(arq: ArqRedis, settings: Settings, task_id: str, defer_by: float | None = None) -> bool:
    """Ask a worker to step the task (after ``defer_by`` seconds). Returns False if its job is already queued.

    Idempotent. Raises redis errors to the caller, who decides whether a lost hint matters (it never loses money:
    the sweeper re-enqueues from Postgres)."""
    job = await arq.enqueue_job(
        STEP_FUNCTION, task_id, _job_id=job_id(task_id), _queue_name=settings.queue_name, _defer_by=defer_by
    )
    return job is not None


async def poke(arq: ArqRedis, settings: Settings, task_id: str) -> bool:
    """Ask a worker to check the task now (a provider callback arrived). Idempotent while one poke is queued.

    The job is scored in the past, so it runs before every job that became due after it: workers take due jobs
    oldest score first, and a callback should not wait behind a burst of creates (BENCHMARKS.md)."""
    job = await arq.enqueue_job(
        STEP_FUNCTION,
        task_id,
        True,
        _job_id=poke_id(task_id),
        _queue_name=settings.queue_name,
        _defer_until=datetime.now(UTC) - POKE_HEAD_START,
    )
    return job is not None
