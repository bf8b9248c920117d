"""Tier limits: jobs per UTC day, jobs at once, and a cooldown between two jobs of a kind.

Enforced in Redis, one Lua script per operation, so every check-and-count is atomic and exact however many
API processes race. Redis's own clock (``TIME``) is the only clock, so API hosts with skewed clocks agree on
the day and on the cooldown. Keys (named in shared/redis_keys.py), all expiring by themselves:

- ``live:<account>``: ZSET task id → deadline (ms), the account's live jobs. A member past its deadline is
  pruned, so a release that never came (a crashed worker) frees the slot at the deadline anyway.
- ``pending:<account>``: ZSET task id → reservation time (ms), reservations whose submit has not committed.
- ``daily:<account>``: HASH UTC day number → jobs started that day (only today's field is kept).
- ``cooldown:<account>:<kind>``: "<start ms> <task id>", expiring when the cooldown ends.

A reservation is taken before credits are held (docs/API.md: limits are checked first), so a request that
then fails on credits briefly holds a slot it gives back with :func:`undo`. To keep the limits exact with
respect to what finally commits, a request refused while the account has pending reservations waits for them
to resolve (briefly, see :func:`reserve`) and asks again, rather than answer 429 for a job that never happens.

Limits are a policy, not money: credits are the hard limit (docs/CONFIGURATION.md). Still, when Redis is unreachable the
limits cannot be enforced, and every function here raises :class:`~shared.errors.Unavailable` (fail closed).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from shared import redis_keys
from shared.config import Settings
from shared.errors import RateLimited
from shared.lua import Script
from shared.pricing import Tier
from shared.queue import WRITE_JOB_LUA, JobWrite

# A reservation older than this is pending no more: its API process died between reserve and commit.
PENDING_MS = 30_000
# How long a refused request may wait for the account's pending reservations to resolve before answering 429.
PENDING_WAIT_SECONDS = 2.0

_RESERVE = """
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(now_s / 86400)
local task = ARGV[1]
local lifetime = tonumber(ARGV[2])
local daily_limit = tonumber(ARGV[3])
local live_limit = tonumber(ARGV[4])
local cooldown = tonumber(ARGV[5])
local pending_ms = tonumber(ARGV[6])

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - pending_ms)
if redis.call('ZSCORE', KEYS[1], task) then
    return {'ok', 0, 0}
end
local pending = redis.call('ZCARD', KEYS[2])

local today = tonumber(redis.call('HGET', KEYS[3], day) or '0')
if daily_limit > 0 and today >= daily_limit then
    return {'daily', (86400 - now_s % 86400) * 1000, pending}
end
if cooldown > 0 then
    local last = redis.call('GET', KEYS[4])
    if last then
        local left = tonumber(string.match(last, '^(%d+)')) + cooldown - now
        if left > 0 then
            return {'cooldown', left, pending}
        end
    end
end
if live_limit > 0 and redis.call('ZCARD', KEYS[1]) >= live_limit then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'concurrent', tonumber(first[2]) - now, pending}
end

redis.call('ZADD', KEYS[1], now + lifetime, task)
if redis.call('PTTL', KEYS[1]) < lifetime then
    redis.call('PEXPIRE', KEYS[1], lifetime)
end
redis.call('ZADD', KEYS[2], now, task)
redis.call('PEXPIRE', KEYS[2], pending_ms)
for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
    if tonumber(field) ~= day then
        redis.call('HDEL', KEYS[3], field)
    end
end
redis.call('HINCRBY', KEYS[3], day, 1)
redis.call('EXPIRE', KEYS[3], 172800)
if cooldown > 0 then
    redis.call('SET', KEYS[4], string.format('%d', now) .. ' ' .. task, 'PX', cooldown)
end
return {'ok', 0, 0}
"""

# Only a reservation still in the live set is undone, so a second undo is a no-op. The daily counter is the
# one of the day of the undo: a reservation undone across midnight gives back today's count (never below 0).
_UNDO = """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
    return 0
end
local day = math.floor(tonumber(redis.call('TIME')[1]) / 86400)
if tonumber(redis.call('HGET', KEYS[3], day) or '0') > 0 then
    redis.call('HINCRBY', KEYS[3], day, -1)
end
local last = redis.call('GET', KEYS[4])
local mine = ' ' .. ARGV[1]
if last and string.sub(last, -string.len(mine)) == mine then
    redis.call('DEL', KEYS[4])
end
return 1
"""

_CONFIRM = """
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

# After the submit committed, in one round trip: the limit bookkeeping (ARGV[2] 'confirm': the reservation taken
# before is pending no more; 'count': the tier limits nothing, so nothing was reserved before, and the job is
# counted now, as a reservation would have) and the arq job, written as ArqRedis.enqueue_job writes it (job key
# with its expiry, queue entry with its score) unless a job or result of that id exists (arq's uniqueness).
# KEYS: live, pending, daily, cooldown (unused), arq job key, arq result key, arq queue.
# ARGV: task, mode, lifetime ms, arq job id, job bytes, score ms, job key expiry ms. Returns 1 if enqueued.
_ADMIT = (
    WRITE_JOB_LUA
    + """
local task = ARGV[1]
if ARGV[2] == 'confirm' then
    redis.call('ZREM', KEYS[2], task)
else
    local t = redis.call('TIME')
    local now_s = tonumber(t[1])
    local now = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
    local day = math.floor(now_s / 86400)
    local lifetime = tonumber(ARGV[3])
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    if not redis.call('ZSCORE', KEYS[1], task) then
        redis.call('ZADD', KEYS[1], now + lifetime, task)
        if redis.call('PTTL', KEYS[1]) < lifetime then
            redis.call('PEXPIRE', KEYS[1], lifetime)
        end
        for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
            if tonumber(field) ~= day then
                redis.call('HDEL', KEYS[3], field)
            end
        end
        redis.call('HINCRBY', KEYS[3], day, 1)
        redis.call('EXPIRE', KEYS[3], 172800)
    end
end
return write_job(KEYS[5], KEYS[6], KEYS[7], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
"""
)

# The task ended: free its live slot, and drop its step job (the deferred safety-net look it no longer needs)
# unless that job is running now (arq's in-progress key: the job ends by itself). KEYS: live, pending, arq queue,
# the step job's job key, retry key, in-progress key. ARGV: task, step job id.
_RELEASE = """
redis.call('ZREM', KEYS[2], ARGV[1])
local freed = redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[6]) == 0 and redis.call('ZREM', KEYS[3], ARGV[2]) > 0 then
    redis.call('DEL', KEYS[4], KEYS[5])
end
return freed
"""

# Read-only: KEYS = live, daily, then one cooldown key per ARGV cooldown length (ms).
_USAGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(tonumber(t[1]) / 86400)
local out = {redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%d', now), '+inf'),
             tonumber(redis.call('HGET', KEYS[2], day) or '0')}
for i = 3, #KEYS do
    local left = 0
    local last = redis.call('GET', KEYS[i])
    if last then
        left = math.max(0, tonumber(string.match(last, '^(%d+)')) + tonumber(ARGV[i - 2]) - now)
    end
    out[#out + 1] = left
end
return out
"""


_reserve = Script(_RESERVE, unavailable=True)
_undo = Script(_UNDO, unavailable=True)
_confirm = Script(_CONFIRM, unavailable=True)
_admit = Script(_ADMIT, unavailable=True)
_release = Script(_RELEASE, unavailable=True)
_usage = Script(_USAGE, unavailable=True)


def _keys(settings: Settings, account_id: str, kind: str) -> list[str]:
    q = settings.queue_name
    return [
        redis_keys.limits_live(q, account_id),
        redis_keys.limits_pending(q, account_id),
        redis_keys.limits_daily(q, account_id),
        redis_keys.limits_cooldown(q, account_id, kind),
    ]


def _seconds(ms: float) -> int:
    return max(1, math.ceil(ms / 1000))


async def reserve(
    redis: Redis,
    settings: Settings,
    account_id: str,
    tier: Tier,
    kind: str,
    task_id: str,
    deadline_seconds: float,
) -> None:
    """Count a new job of ``kind`` against the account's limits, or refuse it; atomic and exact.

    On success the job holds a live slot until :func:`release` (or its deadline plus the sweep interval, when
    the release never comes), counts for today, and starts the kind's cooldown. The reservation stays pending
    until :func:`confirm` (its task committed) or :func:`undo` (its submit failed). Reserving the same
    ``task_id`` twice is a no-op.

    Raises RateLimited with ``retry_after`` in whole seconds ≥ 1: daily limit → seconds until UTC midnight;
    cooldown → seconds left; concurrent → a hint of 1 to 5 s. A refusal while other reservations of the
    account are pending waits up to PENDING_WAIT_SECONDS for them to resolve first. Raises Unavailable if
    Redis is unreachable.
    """
    keys = _keys(settings, account_id, kind)
    lifetime_ms = int((deadline_seconds + settings.sweep_seconds) * 1000)
    args: list[str | int | float] = [
        task_id,
        lifetime_ms,
        tier.daily_jobs,
        tier.concurrent_jobs,
        tier.cooldown_seconds.get(kind, 0) * 1000,
        PENDING_MS,
    ]
    give_up = time.monotonic() + PENDING_WAIT_SECONDS
    pause = 0.005
    while True:
        outcome, wait_ms, pending = await _reserve(redis, keys, args)
        outcome = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        if outcome == "ok":
            return
        if int(pending) == 0 or time.monotonic() >= give_up:
            break
        # Another request of this account reserved and has not committed: it may fail and give its slot back.
        await asyncio.sleep(pause * (1 + random.random()))
        pause = min(pause * 2, 0.05)
    if outcome == "daily":
        raise RateLimited(
            f"the {tier.name} tier allows {tier.daily_jobs} jobs a day; the count resets at 00:00 UTC",
            retry_after=_seconds(int(wait_ms)),
        )
    if outcome == "cooldown":
        raise RateLimited(
            f"the {tier.name} tier allows one {kind} job every {tier.cooldown_seconds.get(kind, 0)} s",
            retry_after=_seconds(int(wait_ms)),
        )
    raise RateLimited(
        f"the {tier.name} tier allows {tier.concurrent_jobs} jobs at once; wait for one to finish",
        retry_after=min(5, _seconds(int(wait_ms))),
    )


def limited(tier: Tier, kind: str) -> bool:
    """True when the tier limits jobs of ``kind`` at all (a daily, concurrent or cooldown limit): then a submit
    must :func:`reserve` before it holds credits. When False, nothing can refuse it here, so the job is counted
    after its commit, by :func:`admit` with ``reserved`` False, in the round trip that queues it."""
    return bool(tier.daily_jobs or tier.concurrent_jobs or tier.cooldown_seconds.get(kind, 0))


async def admit(
    redis: Redis,
    settings: Settings,
    account_id: str,
    task_id: str,
    deadline_seconds: float,
    job: JobWrite,
    *,
    reserved: bool,
) -> bool:
    """The submit of ``task_id`` committed: settle its limit bookkeeping and queue its arq ``job``, in ONE Redis
    round trip (one script). ``reserved``: a :func:`reserve` was taken before, and is confirmed (as
    :func:`confirm`); else the job is counted now (live slot and today's count, as a reservation would have: the
    tier limits nothing, see :func:`limited`). The job is written as arq's ``enqueue_job`` writes it, unless a job
    or result of its id exists. Returns True if the job was queued. Idempotent. Raises Unavailable (Redis
    unreachable) and what Redis raises; the caller decides: the task is committed, the sweeper queues it."""
    keys = [*_keys(settings, account_id, ""), *job.keys]
    lifetime_ms = int((deadline_seconds + settings.sweep_seconds) * 1000)
    mode = "confirm" if reserved else "count"
    args: list[str | int | float | bytes] = [
        task_id,
        mode,
        lifetime_ms,
        job.job_id,
        job.data,
        job.score_ms,
        job.expires_ms,
    ]
    return bool(await _admit(redis, keys, args))


async def confirm(redis: Redis, settings: Settings, account_id: str, task_id: str) -> None:
    """The reservation's task committed: it is pending no more. Idempotent. Raises Unavailable."""
    await _confirm(redis, [_keys(settings, account_id, "")[1]], [task_id])


async def undo(redis: Redis, settings: Settings, account_id: str, kind: str, task_id: str) -> None:
    """Reverse a reservation whose submit failed (or answered an earlier task): free the live slot, give back
    today's count, and end the cooldown if this reservation started it. Idempotent. Raises Unavailable."""
    await _undo(redis, _keys(settings, account_id, kind), [task_id])


async def release(redis: Redis, settings: Settings, account_id: str, task_id: str) -> None:
    """A task ended (terminal state) or was canceled: free its live slot. Today's count and the cooldown stay,
    since the job did start. In the same round trip, the task's step job is taken off the queue unless it is
    running: a task that a poke (or the sweeper, or a cancel) ended needs no more look, so its deferred
    safety-net job would be an arq job, a Postgres read and this release again for nothing. Idempotent. Raises
    Unavailable."""
    keys = _keys(settings, account_id, "")
    job_id = redis_keys.step_job_id(task_id)
    arq_keys = [
        settings.queue_name,
        job_key_prefix + job_id,
        retry_key_prefix + job_id,
        in_progress_key_prefix + job_id,
    ]
    await _release(redis, [*keys[:2], *arq_keys], [task_id, job_id])


async def usage(redis: Redis, settings: Settings, account_id: str, tier: Tier) -> dict[str, Any]:
    """The tier's limits and today's use, as the account view shows them (a limit of 0 means none: ``None``)::

        {"dailyJobs": {"limit": 10, "used": 3}, "concurrentJobs": {"limit": 2, "used": 1},
         "cooldownSeconds": {"video": 180}, "cooldownRemaining": {"video": 42}}

    Raises Unavailable.
    """
    kinds = _cooldown_kinds(tier)
    keys = _keys(settings, account_id, "")
    cooldown_keys = [_keys(settings, account_id, k)[3] for k in kinds]
    out = await _usage(redis, [keys[0], keys[2], *cooldown_keys], [tier.cooldown_seconds[k] * 1000 for k in kinds])
    live, today, *left = (int(x) for x in out)
    return _view(tier, live, today, [math.ceil(ms / 1000) for ms in left])


def unknown_usage(tier: Tier) -> dict[str, Any]:
    """The shape of :func:`usage` with the tier's limits and ``None`` for the use (Redis unreachable)."""
    return _view(tier, None, None, [None] * len(_cooldown_kinds(tier)))


def _cooldown_kinds(tier: Tier) -> list[str]:
    return sorted(k for k, seconds in tier.cooldown_seconds.items() if seconds > 0)


def _view(tier: Tier, live: int | None, today: int | None, left: list[int | None]) -> dict[str, Any]:
    kinds = _cooldown_kinds(tier)
    return {
        "dailyJobs": {"limit": tier.daily_jobs or None, "used": today},
        "concurrentJobs": {"limit": tier.concurrent_jobs or None, "used": live},
        "cooldownSeconds": {k: tier.cooldown_seconds[k] for k in kinds},
        "cooldownRemaining": dict(zip(kinds, left, strict=True)),
    }
