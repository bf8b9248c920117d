"""How a task is admitted: the one way a submit becomes a held, queued task (``POST /v1/jobs``).

:func:`admit` runs, in this order (docs/API.md: limits are checked before credits):

1. the tier limits (:func:`shared.tier_limits.reserve`: daily, concurrent, cooldown; one Lua call in Redis), skipped
   for a tier that limits nothing (:func:`shared.tier_limits.limited`);
2. the task and its hold, one transaction (:meth:`shared.ledger.tasks.SubmitBatcher.submit` →
   ``cq_submit_batch``, group-committed);
3. confirm the reservation, or undo it (the submit failed: 402, 403, 409, Postgres down; or it was an idempotent
   repeat, whose first task already counted);
4. the repeat rule: a repeat of a request that made its task answers that task, even at the limit
   (:func:`first_task`);
5. the enqueue, in the same Redis round trip as the confirmation (:func:`shared.tier_limits.admit`). After the commit
   the task is durable: if Redis fails here, the sweeper enqueues it from Postgres.

The tier slot's life goes on in :mod:`shared.settlement` (its release, when the task ends or is canceled); every
limit operation itself is in :mod:`shared.tier_limits`. The HTTP handler (:func:`api.jobs.submit_job`) parses the
request, calls :func:`admit` and answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import asyncpg
import structlog
from arq.connections import ArqRedis

from shared import queue, tier_limits
from shared.config import Settings
from shared.errors import IdempotencyConflict, RateLimited, Unavailable
from shared.ledger import tasks
from shared.pricing import Model, Priced, Tier

log = structlog.get_logger("creditq.shared")


class Gate(Protocol):
    """The connections an admission uses, each taken when needed (the API's ``Services`` is one). ``db`` and
    ``arq`` raise Unavailable."""

    @property
    def settings(self) -> Settings: ...
    @property
    def submits(self) -> tasks.SubmitBatcher: ...
    async def db(self) -> asyncpg.Pool: ...
    async def arq(self) -> ArqRedis: ...


@dataclass(frozen=True, slots=True)
class Request:
    """A submit, parsed and priced: who, on which tier, what (the validated input and its price), and how it
    may be repeated (``idempotency_key`` and the hash of the body as sent, both None without the header)."""

    account_id: str
    tier: Tier
    model: Model
    priced: Priced
    callback_url: str | None
    idempotency_key: str | None
    request_hash: str | None


async def first_task(
    pool: asyncpg.Pool, account_id: str, key: str | None, digest: str | None, *, conflict: bool = True
) -> asyncpg.Record | None:
    """The repeat rule: the first task made with this ``Idempotency-Key`` and body, or None (no key, no such
    task, or, without ``conflict``, another body). With ``conflict`` another body raises IdempotencyConflict
    (409). Read-only. Raises Unavailable."""
    if key is None:
        return None
    first = await tasks.get_by_idempotency_key(pool, account_id, key)
    if first is None:
        return None
    if first["request_hash"] != digest:
        if not conflict:
            return None
        raise IdempotencyConflict("this Idempotency-Key was used with another request body")
    return first


async def admit(gate: Gate, want: Request) -> asyncpg.Record:
    """Admit ``want``: the task, held and queued (steps 1-5 of the module docstring). Returns the task (a new
    one, or the first task of an idempotent repeat, which holds nothing more). Exactly one hold per task; a
    reservation is never left behind by a submit that did not commit (it is undone, or expires by itself).

    Raises RateLimited (429, a limit refused and this is no repeat), IdempotencyConflict (409), the submit's
    own errors (InsufficientCredits 402, Forbidden 403, ...) and Unavailable (Redis unreachable before the
    commit: the limits fail closed; Postgres unreachable)."""
    settings = gate.settings
    model = want.model
    task_id = tasks.new_task_id()
    redis = await gate.arq()
    # A tier that limits nothing cannot refuse: its job is counted after the commit, in the round trip that
    # queues it (tier_limits.admit), so this submit costs one Redis round trip instead of two.
    reserved = tier_limits.limited(want.tier, model.kind)
    if reserved:
        try:
            await tier_limits.reserve(
                redis, settings, want.account_id, want.tier, model.kind, task_id, model.deadline_seconds
            )
        except RateLimited:
            if want.idempotency_key is None:
                raise
            first = await first_task(await gate.db(), want.account_id, want.idempotency_key, want.request_hash)
            if first is not None:
                return first
            raise

    try:
        wanted = tasks.SubmitRequest(
            model,
            want.priced.input,
            want.callback_url,
            want.idempotency_key,
            want.request_hash,
            task_id,
            cost=want.priced.cost,
            breakdown=want.priced.breakdown,
        )
        submitted = await gate.submits.submit(await gate.db(), want.account_id, wanted)
    except BaseException:
        if reserved:
            await _undo(redis, settings, want.account_id, model.kind, task_id)
        raise
    if not submitted.inserted:
        if reserved:
            await _undo(redis, settings, want.account_id, model.kind, task_id)
        return submitted.task

    await _confirm_and_enqueue(redis, settings, want.account_id, task_id, model.deadline_seconds, reserved)
    return submitted.task


async def _undo(redis: ArqRedis, settings: Settings, account_id: str, kind: str, task_id: str) -> None:
    try:
        await tier_limits.undo(redis, settings, account_id, kind, task_id)
    except Unavailable as e:
        # The slot frees itself at the task's deadline; today's count stays one too high. Not money.
        log.warning("limits.undo_failed", account_id=account_id, task_id=task_id, error=e.message)


async def _confirm_and_enqueue(
    redis: ArqRedis, settings: Settings, account_id: str, task_id: str, deadline_seconds: float, reserved: bool
) -> None:
    """Confirm (or count) the limit reservation and queue the task: one Redis round trip (tier_limits.admit)."""
    try:
        job = queue.step_job(redis, settings, task_id)
        await tier_limits.admit(redis, settings, account_id, task_id, deadline_seconds, job, reserved=reserved)
    except Exception as e:
        # The task and its hold are committed: the sweeper finds it in Postgres and enqueues it. A pending mark
        # left behind expires by itself (tier_limits.PENDING_MS); meanwhile refusals wait a little longer.
        log.warning("task.enqueue_failed", task_id=task_id, error=f"{type(e).__name__}: {e}")
