"""The arq queue: how the API and the sweeper say "look at task X soon".

Redis is only a hint (docs/ARCHITECTURE.md, principle 1): a task whose queue entry is lost is found again in Postgres by the
sweeper. Each task has one arq job id, ``task:<taskId>``, so enqueueing a task that is already queued is a no-op;
a callback's "look now" uses a second id, ``poke:<taskId>``, so it is never swallowed by the deferred poll job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.exceptions import RedisError

from shared import redis_keys
from shared.config import Settings
from shared.errors import Unavailable
from shared.lua import Script

STEP_FUNCTION = "step"
# How far in the past a poke is scored (arq keeps a job's key for 1 day past its score, so well under that).
POKE_HEAD_START = timedelta(minutes=10)


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
        STEP_FUNCTION,
        task_id,
        _job_id=redis_keys.step_job_id(task_id),
        _queue_name=settings.queue_name,
        _defer_by=defer_by,
    )
    return job is not None


@dataclass(frozen=True, slots=True)
class JobWrite:
    """An arq job made ready for a Lua script to write (:func:`shared.tier_limits.admit` writes it with the limit
    bookkeeping, in one round trip): exactly what ``ArqRedis.enqueue_job`` writes, the job's bytes made by arq's
    own serializer, under arq's own keys, so that arq's worker reads it as one of its own."""

    job_id: str
    queue_name: str
    data: bytes
    score_ms: int
    expires_ms: int

    @property
    def keys(self) -> list[str]:
        """The job key, the result key (a job with either is not enqueued again), the queue."""
        return [job_key_prefix + self.job_id, result_key_prefix + self.job_id, self.queue_name]


# The Lua function that writes a JobWrite, for the scripts that queue a job with their own bookkeeping in one
# round trip (the submit's admission, the poke): what ``ArqRedis.enqueue_job`` does in its WATCH / EXISTS /
# MULTI...EXEC, atomically since a script is. Returns 1 when written, 0 when a job or a result of that id exists.
WRITE_JOB_LUA = """
local function write_job(job_key, result_key, queue, job_id, data, score, expires)
    if redis.call('EXISTS', job_key, result_key) > 0 then
        return 0
    end
    redis.call('PSETEX', job_key, expires, data)
    redis.call('ZADD', queue, score, job_id)
    return 1
end
"""


def _job(arq: ArqRedis, settings: Settings, job_id: str, args: tuple[object, ...], score_ms: int) -> JobWrite:
    """A step job with ``args`` due at ``score_ms``, as ``enqueue_job`` would serialize and keep it."""
    now = timestamp_ms()
    data = serialize_job(STEP_FUNCTION, args, {}, None, now, serializer=arq.job_serializer)
    return JobWrite(job_id, settings.queue_name, data, score_ms, score_ms - now + arq.expires_extra_ms)


def step_job(arq: ArqRedis, settings: Settings, task_id: str) -> JobWrite:
    """The task's step job, due now, as :func:`enqueue` would write it (no Redis call). Pure but for the clock."""
    return _job(arq, settings, redis_keys.step_job_id(task_id), (task_id,), timestamp_ms())


# The poke gate of one task: the time (ms, Redis's clock) of the last poke it let through or scheduled. A poke at
# least a window after it goes now; one within the window schedules a single poke at the window's end; further
# ones, while that scheduled poke is still ahead, coalesce into it. So whatever the number of callbacks, a task
# gets at most one poke per window, and the last callback of a burst is looked at within a window.
# A poke let through is queued by the script itself (KEYS 2-4 and ARGV 2-5: the immediate poke's JobWrite), so
# the usual callback costs one round trip; it answers {0, 1 if written}.
_POKE_GATE = (
    WRITE_JOB_LUA
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if last < 0 or now >= last + window then
  redis.call('SET', KEYS[1], now, 'PX', window * 3)
  return {0, write_job(KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], ARGV[4], ARGV[5])}
end
if last > now then
  return {-1, last}
end
redis.call('SET', KEYS[1], last + window, 'PX', window * 3)
return {last + window, now}
"""
)
_poke_gate = Script(_POKE_GATE)
# A poke that finds the task still pending looks again this many times, 2-3 s apart (the callback may come a
# moment before the record shows the outcome). A scheduled (coalesced) poke runs a window after the callbacks it
# stands for, when the record has caught up: it looks once (it starts with its try count past the rechecks).
POKE_RECHECKS = 3


async def poke(arq: ArqRedis, settings: Settings, task_id: str) -> bool:
    """Ask a worker to check the task soon (a provider callback arrived). Returns True when a poke was queued,
    False when this one coalesced into a poke already queued or scheduled.

    Bounded per task (``CREDITQ_POKE_SECONDS``, the window): the first callback after a quiet window pokes at
    once; callbacks within the window schedule one poke at its end, and any more coalesce into that one. So a
    flood of callbacks for one task costs at most one poke (at most 1 + :data:`POKE_RECHECKS` status queries for
    an immediate one, 1 for a scheduled one) per window. An immediate poke is scored in the past, so it runs
    before every job that became due after it: workers take due jobs oldest score first, and a callback should
    not wait behind a burst of creates (BENCHMARKS.md). Raises redis errors (the caller answers 503)."""
    window_ms = max(1, round(settings.poke_seconds * 1000))
    head_start_ms = int(POKE_HEAD_START.total_seconds() * 1000)
    now = _job(arq, settings, redis_keys.poke_job_id(task_id), (task_id, True), timestamp_ms() - head_start_ms)
    keys = [redis_keys.poke_gate(settings.queue_name, task_id), *now.keys]
    at_ms, written = await _poke_gate(arq, keys, [window_ms, now.job_id, now.data, now.score_ms, now.expires_ms])
    at_ms = int(at_ms)
    if at_ms < 0:
        return False
    if at_ms == 0:
        return bool(written)
    job = await arq.enqueue_job(
        STEP_FUNCTION,
        task_id,
        True,
        _job_id=redis_keys.scheduled_poke_job_id(task_id, at_ms),
        _queue_name=settings.queue_name,
        _defer_until=datetime.fromtimestamp(at_ms / 1000, UTC),
        _job_try=POKE_RECHECKS + 1,
    )
    return job is not None


DELIVER_FUNCTION = "deliver"


async def enqueue_delivery(
    arq: ArqRedis, settings: Settings, webhook_id: str, now: bool = False, swept_at_attempt: int | None = None
) -> bool:
    """Ask a worker to attempt a client webhook delivery. Returns False if its job is already queued (a no-op).
    ``now``: a client's retry, under a job id of its own so that it is not swallowed by a job deferred for hours
    (the deferred one then finds nothing due and ends). ``swept_at_attempt``: the delivery sweep's hint for a
    delivery found overdue after that many attempts, under a job id of its own too, so that a job left "in
    progress" by a killed worker (which arq would run again only after its lease) does not block it; one per
    attempt count however often the sweep finds it. Raises redis errors; a lost hint is found again by the
    delivery sweep in Postgres."""
    if now:
        job_id = redis_keys.delivery_now_job_id(webhook_id, datetime.now(UTC).timestamp())
    elif swept_at_attempt is not None:
        job_id = redis_keys.delivery_sweep_job_id(webhook_id, swept_at_attempt)
    else:
        job_id = redis_keys.delivery_job_id(webhook_id)
    job = await arq.enqueue_job(DELIVER_FUNCTION, webhook_id, _job_id=job_id, _queue_name=settings.queue_name)
    return job is not None


async def queued_task_ids(arq: ArqRedis, settings: Settings, limit: int = 10_000) -> tuple[list[str], int]:
    """The task ids of the first ``limit`` queue entries (step and poke jobs, due or deferred), deduplicated, and
    the number of entries in all. A finished task's deferred wake-up stays queued until it is due (its step then
    finds the task ended), so the entries over-count live work: the caller checks the ids against Postgres.
    Raises redis errors."""
    total = int(await arq.zcard(settings.queue_name))
    raw = await arq.zrange(settings.queue_name, 0, limit - 1)
    ids: set[str] = set()
    for member in raw:
        job = member.decode() if isinstance(member, bytes) else str(member)
        parts = job.split(":")  # task:<taskId>, poke:<taskId> or poke:<taskId>:<ms>
        if parts[0] in ("task", "poke") and len(parts) > 1 and parts[1]:
            ids.add(parts[1])
    return sorted(ids), total
