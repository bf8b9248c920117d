"""The step: one short look at one task, after which it is settled or re-scheduled (``arq.Retry``).

Postgres is the truth: every step starts by reading the task, so a step run twice, late, or by two workers at once
does no harm. Money moves only in ``ledger.tasks.finish`` (exactly once, guarded by the task's status).

    queued   take a create token of a provider key whose circuit is closed (every circuit open → look again
             later), claim the create with that key (the intent is recorded), create; success → running;
             refused for the task → failed (refund); refused for the key or account (401, 402, 433) → open
             that key's circuit, back to queued (another key may take it); transient → back to queued with
             backoff
    running  take a query token of the key that created it, one status query: succeeded → captured; failed →
             refunded (never resubmitted); pending → next check on the adaptive schedule (worker/schedule.py);
             the query failed (401, 404, "recordInfo is null", 5xx, anything) → look again with backoff: only
             the provider's verdict or the deadline ends a task
    any      past the deadline → one last status query (a success since the last poll is captured; an error is
             tried again for a few seconds), else failed ``provider_timeout`` (refund)

The worker does not know which provider family it drives: :mod:`shared.families` builds the requests and
reads the answers.

A crash between create and record. ``claim_submit`` stamps ``submit_started_at`` before the create call, and
``mark_running`` clears it with the provider's task id after. A task found ``queued`` with that stamp may have a
provider task nobody recorded (the worker died, the step timed out, Postgres was down, or the create got no
answer), and creating it again could run and bill it twice. So it is never created again:

1. If a provider task id was noted for it in Redis (the worker notes it right after the create answers; the API
   notes the id a provider callback carries), it is checked with one status query (with the key the claim
   recorded) whose ``param`` echoes our request (the callback URL naming our task, or the same prompt, and the
   model when the echo has one; ``param`` and its ``input`` may be JSON strings); a match resumes the task as
   ``running``. A query that fails is tried again later.
2. Otherwise, until ``KIE_TIMEOUT`` + the create-token wait + 5 s have passed since the stamp, the create may
   still be in flight: look again then.
3. After that, with callbacks (``CREDITQ_PUBLIC_URL`` set) the provider will call back when its task ends, and
   the API's poke brings us to 1. We wait, checking every 30-60 s, and if nothing matches by the deadline the
   task fails ``provider_timeout`` and is refunded. Without callbacks nobody can ever name the provider task, so
   the task fails at once with ``submit_interrupted`` and is refunded.

Either way the client is never charged for a result we cannot prove, and never billed twice; the price is that
the provider may have run (and billed us for) a task we refunded.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import asyncpg
import structlog
from arq import Retry
from redis.exceptions import RedisError

from shared import db, families, metrics, queue, settlement
from shared.errors import (
    NotFound,
    ProviderAccountRefused,
    ProviderError,
    ProviderPermanent,
    ProviderTransient,
    Unavailable,
)
from shared.ledger import tasks
from shared.pricing import Model
from shared.provider import CreateOutcomeUnknown, ProviderStatus, noted_provider_task, provider_note
from shared.provider_budget import Kind, ProviderKey
from worker import health, schedule
from worker.runtime import Runtime

log = structlog.get_logger("creditq.worker")
T = TypeVar("T")

CREATE_TOKEN_WAIT = 2.0  # seconds a step may wait for a create token before re-scheduling itself
QUERY_TOKEN_WAIT = 1.0
CIRCUIT_COOLDOWN = 60.0  # an open circuit closes by itself after this, so that a create probes the provider
# Why a key's circuit opens, by the create's answer; a usage cap (433) lasts hours, so it is probed less often.
CIRCUIT_REASONS = {401: "provider_unauthorized", 402: "provider_out_of_credits", 433: "provider_usage_cap"}
CIRCUIT_COOLDOWNS = {433: 300.0}
CIRCUIT_RECHECK = (3.0, 6.0)  # a queued task looks at an open circuit again after this many seconds
POKE_RECHECKS = queue.POKE_RECHECKS  # a poke that finds the task still pending looks again, 2-3 s apart
FINAL_LOOK_TOKEN_WAIT = 5.0  # the last look before a refund may wait this long for a query token
STEP_SLACK = 7.0  # a step's own time budget beyond KIE_TIMEOUT (token waits, a few statements)
STATUS_BACKOFF_BASE = 2.0  # a failed status query: look again after 1-2 s, then 2-4, 4-8... up to 30-60 s
STATUS_BACKOFF_CAP = 60.0

Log = Any  # a bound structlog logger
_OUTAGES: tuple[type[BaseException], ...] = (Unavailable, RedisError, *db.CONNECTION_ERRORS)


def step_budget(settings_timeout: float) -> float:
    """Seconds a step may take in all; arq's job timeout is a little longer."""
    return settings_timeout + STEP_SLACK


def intent_stale_after(kie_timeout: float) -> float:
    """Seconds after ``submit_started_at`` when a create call can no longer be in flight."""
    return kie_timeout + CREATE_TOKEN_WAIT + schedule.INTENT_GRACE_SECONDS


async def step(ctx: dict[str, Any], task_id: str, poked: bool = False) -> str:
    """arq job ``step``: move task ``task_id`` on by one step (``poked``: a provider callback came, check now).

    Idempotent and safe to run concurrently with itself: it re-reads the task, claims creates in Postgres, and
    settles through ``ledger.tasks.finish`` (exactly once). Never raises except ``arq.Retry`` (look again later):
    Postgres or Redis down, and unexpected errors, re-schedule the task with backoff instead of dropping it.
    Returns the task's status for arq's log line.
    """
    rt: Runtime = ctx["rt"]
    try:
        async with asyncio.timeout(step_budget(rt.settings.kie_timeout)):
            status = await _step(rt, task_id, poked, int(ctx.get("job_try") or 1))
    except Retry:
        _outage_over(rt)
        raise
    except _OUTAGES as e:
        # An outage (or the step's time budget ran out): one terse line, look again once it may be over.
        delay = _outage_backoff(rt, base=1.0, cap=30.0)
        log.warning("step.unavailable", task_id=task_id, error=f"{type(e).__name__}: {e}", retry_in=round(delay, 1))
        raise Retry(defer=delay) from None
    except Exception:
        delay = _outage_backoff(rt, base=2.0, cap=60.0)
        log.exception("step.error", task_id=task_id, retry_in=round(delay, 1))
        raise Retry(defer=delay) from None
    _outage_over(rt)
    return status


def _outage_backoff(rt: Runtime, base: float, cap: float) -> float:
    """The delay before a step that failed in an outage runs again: uniform in [d/2, d], d = the outage's age
    so far / 2, at least ``base``, at most ``cap``. It grows with how long the outage has lasted, not with how
    many steps met it: with many tasks in flight a count of failures reaches the cap within a second or two, and
    every task would then sit out the cap after the service came back. So a task resumes within about half the
    outage's length (or ``cap``) after its end."""
    now = time.monotonic()
    if rt.outage_since is None:
        rt.outage_since = now
    d = min(cap, max(base, (now - rt.outage_since) / 2))
    return random.uniform(d / 2, d)


def _outage_over(rt: Runtime) -> None:
    """A step got through: the outage, if any, is over."""
    rt.outage_since = None


async def _step(rt: Runtime, task_id: str, poked: bool, job_try: int) -> str:
    taken: _Taken | None = None
    if job_try == 1 and not poked:
        # A job's first run is nearly always its task's create (the API queued it a moment ago): the create
        # token, then the claim, which returns the task, so the task is not read before. A task that turns out
        # not to be queued (a job the sweeper queued again) gives its token back and goes the general way.
        taken = await _take_create(rt, rt.budget.new_token())
        if taken.key is not None:
            claimed = await tasks.claim_submit(rt.pool, task_id, taken.key.id)
            if claimed is not None:
                return await _create(rt, claimed, rt.model(claimed), taken.key, taken.token)
            await _give_back(taken)
            taken = None
    try:
        task = await tasks.get(rt.pool, task_id)
    except NotFound:
        log.warning("step.unknown_task", task_id=task_id)
        return "unknown"
    tlog = settlement.bound(task)
    if task["status"] in tasks.TERMINAL:
        await settlement.release_slot(rt, task)
        return str(task["status"])
    model = rt.model(task)
    if _until(task["deadline_at"]) <= 0:
        return await end_overdue(rt, task, tlog, may_wait=True)
    if task["status"] == "queued":
        return await _submit(rt, task, model, tlog, taken)
    return await _poll(rt, task, model, tlog, poked, job_try)


# --- queued ---------------------------------------------------------------------------------------------------


async def _submit(rt: Runtime, task: asyncpg.Record, model: Model, tlog: Log, taken: _Taken | None) -> str:
    """A queued task: recover an interrupted create, or take a create token (``taken``: the one this step's fast
    path already tried for, see :func:`_step`), claim the create with its key and create."""
    task_id = task["id"]
    if task["submit_started_at"] is not None:
        if taken is not None:
            await _give_back(taken)
        return await _interrupted(rt, task, model, tlog)
    # The token comes first: it says which key creates, and the claim records that key with the intent.
    if taken is None:
        taken = await _take_create(rt, rt.budget.new_token())
    key, wait = taken.key, taken.wait
    if key is None:
        if math.isinf(wait):  # every key's circuit is open: the task stays queued, nothing is failed for it
            await _later(rt, task, random.uniform(*CIRCUIT_RECHECK), write=True)
        await _later(rt, task, wait + random.uniform(0, 1.0), write=True)
    claimed = await tasks.claim_submit(rt.pool, task_id, key.id)
    if claimed is None:
        # Another step holds the claim (or the task just left queued): the next look sees which.
        await _give_back(taken)
        _retry(task, 1.0)
    return await _create(rt, claimed, model, key, taken.token)


async def _create(rt: Runtime, task: asyncpg.Record, model: Model, key: ProviderKey, token: str) -> str:
    """The create of a task this step has claimed (``task``: the row as the claim returned it) with ``key``,
    under the create token ``token``: success → running (the provider's task id noted in Redis as the token is
    given back, one round trip, then recorded in Postgres); the refusals and errors as the module docstring
    says."""
    task_id = task["id"]
    tlog = settlement.bound(task).bind(provider_key=key.id)
    try:
        try:
            create = rt.provider.create(model, dict(task["input"]), _callback_url(rt, task), key.secret)
            provider_task_id = await create
        except BaseException:
            await _done(key, "create", token)
            raise
    except CreateOutcomeUnknown as e:
        # Maybe created: keep the intent so that nobody creates it again (see the module docstring).
        tlog.warning("task.create_unknown", error=e.message)
        _retry(task, intent_stale_after(rt.settings.kie_timeout) + random.uniform(0.5, 1.5))
    except ProviderPermanent as e:
        return await settle(
            rt, task, "failed", tlog, error_code=e.code, error_message=f"the provider refused the task: {e.message}"
        )
    except ProviderAccountRefused as e:
        # The key or its account, not the task: open this key's circuit; another key may take the task soon.
        others = len(rt.keys.keys) > 1
        delay = random.uniform(0.2, 1.0) if others else random.uniform(*CIRCUIT_RECHECK)
        await tasks.abandon_submit(rt.pool, task_id, _at(delay))
        code = e.provider_code or 0
        reason = CIRCUIT_REASONS.get(code, "provider_account_refused")
        if await key.circuit.open(reason, CIRCUIT_COOLDOWNS.get(code, CIRCUIT_COOLDOWN)):
            metrics.CIRCUIT_OPENED.labels(reason).inc()
            tlog.warning("circuit.open", reason=reason, error=e.message)
        _retry(task, delay)
    except ProviderTransient as e:
        delay = max(e.retry_after or 0.0, schedule.backoff(int(task["submit_attempts"])))
        delay = schedule.bounded(delay, _until(task["deadline_at"]))
        await tasks.abandon_submit(rt.pool, task_id, _at(delay))
        await health.note_transient(rt, task_id, e)
        tlog.info("task.create_retry", error=e.message, retry_in=round(delay, 1))
        raise Retry(defer=delay) from None
    tlog = tlog.bind(provider_task_id=provider_task_id)
    # The answer's time for the budget and the provider's task id for a recovery, in one round trip, before
    # the id is recorded in Postgres (a crash in between is what the note is for).
    await _done(key, "create", token, note=provider_note(rt.settings, task_id, provider_task_id))
    await health.note_reached(rt)
    first = schedule.first_check(rt.settings.callbacks_enabled, model.typical_seconds)
    if not await tasks.mark_running(rt.pool, task_id, provider_task_id, _at(first)):
        # Only the deadline sweep can settle a task whose create is in flight: it was refunded already.
        tlog.warning("task.created_after_end")
        return "ended"
    tlog.info("task.running", first_check_in=round(first, 1))
    _retry(task, first)


async def _interrupted(rt: Runtime, task: asyncpg.Record, model: Model, tlog: Log) -> str:
    """A create was claimed and never recorded: find the provider task, wait, or fail (module docstring)."""
    task_id = task["id"]
    try:
        noted = await noted_provider_task(rt.redis, rt.settings, task_id)
    except (RedisError, OSError):
        noted = None
    if noted is not None:
        # A query that fails here is tried again later (Retry): "not found" right after a create proves nothing.
        st = await _status(rt, task, model, noted, tlog, polled=False)
        if _is_ours(st, task, model):
            if await tasks.mark_running(rt.pool, task_id, noted, _at(0)):
                tlog.info("task.recovered", provider_task_id=noted)
            task = await tasks.get(rt.pool, task_id)
            if task["status"] == "running" and task["provider_task_id"] == noted:
                return await _apply(rt, task, st, tlog.bind(provider_task_id=noted), poked=False, job_try=1)
            return str(task["status"])
        tlog.warning("task.hint_rejected", noted=noted)
    age = (_now() - task["submit_started_at"]).total_seconds()
    stale = intent_stale_after(rt.settings.kie_timeout)
    if age < stale:
        _retry(task, stale - age + random.uniform(0.5, 1.5))
    if rt.settings.callbacks_enabled:
        tlog.info("task.create_interrupted", waiting_for="callback")
        await _later(rt, task, random.uniform(30.0, 60.0), write=True)
    return await settle(
        rt,
        task,
        "failed",
        tlog,
        error_code="submit_interrupted",
        error_message="the task was interrupted while being sent to the provider; not charged",
    )


def _is_ours(st: ProviderStatus, task: asyncpg.Record, model: Model) -> bool:
    """Does the provider's echo of the create request (``param``) show our task (the family's adapter reads
    it)? No echo: the note came from our own worker or from a callback that carried our task's secret token, so
    it is believed."""
    if st.param is None:
        return True
    return families.get(model.family).is_ours(st.param, model, task["id"], task["input"])


def _callback_url(rt: Runtime, task: asyncpg.Record) -> str | None:
    if not rt.settings.callbacks_enabled:
        return None
    return (
        f"{rt.settings.public_url}/v1/webhooks/kie?task={quote(task['id'], safe='')}"
        f"&token={quote(task['callback_token'], safe='')}"
    )


# --- running --------------------------------------------------------------------------------------------------


async def _poll(rt: Runtime, task: asyncpg.Record, model: Model, tlog: Log, poked: bool, job_try: int) -> str:
    if not poked:
        # The schedule lives in Postgres: a duplicate or early run (sweeper, restart) waits for its time.
        due = _until(task["next_check_at"])
        if due > 1.0:
            _retry(task, due)
    st = await _status(rt, task, model, task["provider_task_id"], tlog, polled=True)
    return await _apply(rt, task, st, tlog, poked, job_try)


async def _status(
    rt: Runtime, task: asyncpg.Record, model: Model, provider_task_id: str, tlog: Log, polled: bool
) -> ProviderStatus:
    """One status query with the task's provider key, under that key's budget (``polled``: counted in the
    task's polls). Re-schedules (raises Retry) on a token wait, and on any failed query with a backoff that
    grows with the failures in a row: whatever the provider answers there (401, 404, "recordInfo is null",
    another body code, 5xx), the task may still finish and be billed, so only its verdict or the deadline ends
    it."""
    try:
        st = await _query(rt, task, model, provider_task_id)
    except ProviderError as e:
        errors = int(task["query_errors"]) + 1
        delay = max(e.retry_after or 0.0, schedule.backoff(errors, base=STATUS_BACKOFF_BASE, cap=STATUS_BACKOFF_CAP))
        delay = schedule.bounded(delay, _until(task["deadline_at"]))
        await tasks.schedule(rt.pool, task["id"], _at(delay), polled=polled, query_ok=False)
        tlog.info("task.status_retry", error=e.message, code=e.provider_code, errors=errors, retry_in=round(delay, 1))
        raise Retry(defer=delay) from None
    if isinstance(st, float):  # no query token freed in time
        _retry(task, st + random.uniform(0, 0.5))
    return st


async def _apply(rt: Runtime, task: asyncpg.Record, st: ProviderStatus, tlog: Log, poked: bool, job_try: int) -> str:
    if st.state == "succeeded":
        if not st.urls:
            return await _provider_failed(rt, task, tlog, "the provider reported success without any result file")
        return await settle(rt, task, "succeeded", tlog, result={"urls": list(st.urls)})
    if st.state == "failed":
        why = st.fail_message or "no reason given"
        return await _provider_failed(
            rt, task, tlog, f"the provider failed the task (failCode {st.fail_code or '?'}): {why}"
        )
    age = (_now() - task["created_at"]).total_seconds()
    if poked:
        # The callback said "done" but the record is not there yet: look again soon, a few times; the task's
        # own job keeps its schedule meanwhile. Written only when it changes something besides the count of
        # polls (new progress, failed queries in a row to reset): no Postgres write for a counter alone.
        if _progress_changed(task, st.progress) or task["query_errors"]:
            await tasks.schedule(
                rt.pool, task["id"], task["next_check_at"], polled=True, progress=st.progress, query_ok=True
            )
        if job_try <= POKE_RECHECKS:
            _retry(task, random.uniform(2.0, 3.0))
        return "running"
    delay = schedule.bounded(
        schedule.next_check(
            age, rt.settings.callbacks_enabled, running=rt.running_estimate, query_limit=rt.settings.kie_query_limit
        ),
        _until(task["deadline_at"]),
    )
    await tasks.schedule(rt.pool, task["id"], _at(delay), polled=True, progress=st.progress, query_ok=True)
    raise Retry(defer=delay)


def _progress_changed(task: asyncpg.Record, progress: float | None) -> bool:
    """Would ``tasks.schedule`` store another progress figure than the task's?"""
    return progress is not None and max(0, min(100, round(progress))) != task["progress"]


# --- endings --------------------------------------------------------------------------------------------------


def last_look_grace(sweep_seconds: float) -> float:
    """Seconds past its deadline during which a task's last status query may be tried again (after a
    transient provider error or with no query token): half the sweep interval, so that the task still ends by
    its deadline plus ``CREDITQ_SWEEP_SECONDS``."""
    return sweep_seconds / 2


async def end_overdue(rt: Runtime, task: asyncpg.Record, tlog: Log | None = None, may_wait: bool = False) -> str:
    """A live task past its deadline: one last status query of the provider's task first (a generation that
    ended since the last poll is settled by its real outcome: captured if it succeeded), else failed
    ``provider_timeout`` and released. Used by the task's own step and by the sweeper, so that neither refunds
    unseen a success the other would have seen (a lost callback, then the sweep reaching the task first).

    When the provider could not answer (a transient error, no query token) and ``may_wait``, the look is tried
    again 1-2 s later (raises ``arq.Retry``) until :func:`last_look_grace` has passed; after that, once more at
    once before the refund. Exactly once (settlement is guarded by the task's state). Raises Unavailable,
    NotFound, Retry."""
    tlog = tlog or settlement.bound(task)
    ended, unsure = await _last_look(rt, task, rt.model(task), tlog)
    if ended is not None:
        return ended
    left = last_look_grace(rt.settings.sweep_seconds) + _until(task["deadline_at"])
    if unsure and may_wait and left > 0:
        raise Retry(defer=min(random.uniform(1.0, 2.0), left))
    if unsure:
        # The grace is over: one more look before the refund, so that a single transient error (the provider
        # answers every other query with a 500, say) does not refund a generation that succeeded; it may wait
        # longer for a query token (workers started again after an outage all want one at once).
        ended, _ = await _last_look(rt, task, rt.model(task), tlog, token_wait=FINAL_LOOK_TOKEN_WAIT)
        if ended is not None:
            return ended
    return await expire(rt, task, tlog)


async def _last_look(
    rt: Runtime, task: asyncpg.Record, model: Model, tlog: Log, token_wait: float = QUERY_TOKEN_WAIT
) -> tuple[str | None, bool]:
    """At the deadline, one last status query of a task the provider has (waiting up to ``token_wait`` seconds
    for a query token). Returns (the task's status if that query settled it, else None; True when the provider
    could not say: no query token, a transient error)."""
    if task["status"] != "running" or task["provider_task_id"] is None:
        return None, False
    try:
        st = await _query(rt, task, model, task["provider_task_id"], token_wait)
    except ProviderError as e:
        # Whatever the error (a 5xx, a timeout, "recordInfo is null", a 404): only the provider's verdict ends a
        # task, so the look may be tried again.
        tlog.info("task.last_look_failed", error=e.message)
        return None, True
    if isinstance(st, float):  # no query token freed in time
        tlog.info("task.last_look_no_token", waited=token_wait)
        return None, True
    if st.state == "pending":
        return None, False
    return await _apply(rt, task, st, tlog, poked=True, job_try=1), False


async def _provider_failed(rt: Runtime, task: asyncpg.Record, tlog: Log, message: str) -> str:
    """The provider ended or refused the task: failed ``provider_failed``, hold released (never resubmitted)."""
    return await settle(rt, task, "failed", tlog, error_code="provider_failed", error_message=message)


async def expire(rt: Runtime, task: asyncpg.Record, tlog: Log | None = None) -> str:
    """The deadline path (:func:`shared.settlement.expire`): fail a live task past its deadline with
    ``provider_timeout`` and release its hold. Idempotent (exactly-once settlement). Raises Unavailable, NotFound."""
    row, _ = await settlement.expire(rt, task, tlog or settlement.bound(task))
    return str(row["status"])


async def settle(
    rt: Runtime,
    task: asyncpg.Record,
    status: str,
    tlog: Log,
    *,
    result: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> str:
    """End the task through :func:`shared.settlement.settle` (terminal state and capture/release, one
    transaction, exactly once; then, if this call ended it, the tier slot freed and the client notified, best
    effort, after the commit). Returns the task's status as it now is. Raises Unavailable."""
    row, _ = await settlement.settle(
        rt, task, status, tlog, result=result, error_code=error_code, error_message=error_message
    )
    return str(row["status"])


# --- helpers --------------------------------------------------------------------------------------------------


async def _query(
    rt: Runtime,
    task: asyncpg.Record,
    model: Model,
    provider_task_id: str,
    token_wait: float = QUERY_TOKEN_WAIT,
) -> ProviderStatus | float:
    """One status query with the task's provider key, in the provider-call bracket: a query token of that key's
    budget (waiting up to ``token_wait``), the query, the token given back however it ends. Returns the
    status, or the seconds to wait when no token freed in time (nothing was sent). Raises ProviderError."""
    key = rt.keys.by_id(task["provider_key"])
    token = key.budget.new_token()
    wait = await _take(key, "query", token_wait, token)
    if wait > 0:
        return wait
    return await _called(key, "query", token, rt.provider.status(model, provider_task_id, key.secret))


async def _called(key: ProviderKey, kind: Kind, token: str, call: Awaitable[T]) -> T:
    """The end of the provider-call bracket: await ``call``, made under the budget token ``token`` of ``key``,
    and give the token back (:func:`_done`: counted from the answer, not from the latest time it could have
    arrived) whether it answered or raised. Raises what ``call`` raises."""
    try:
        return await call
    finally:
        await _done(key, kind, token)


async def _take(key: ProviderKey, kind: Kind, max_wait: float, token: str) -> float:
    """A slot of ``key``'s budget for one call (0.0), or the seconds to wait for one; counted for /metrics."""
    started = time.monotonic()
    wait = await key.budget.acquire_or_wait(kind, max_wait, token)
    _count_wait(kind, wait, time.monotonic() - started)
    return wait


@dataclass(frozen=True, slots=True)
class _Taken:
    """What a try for a create token gave: the key whose slot was taken under ``token`` (None: no key had room,
    for ``wait`` seconds, ``inf`` when every key's circuit is open)."""

    token: str
    key: ProviderKey | None
    wait: float


async def _take_create(rt: Runtime, token: str) -> _Taken:
    """A create slot on a key whose circuit is closed, waiting up to :data:`CREATE_TOKEN_WAIT`. Counted for
    /metrics. Raises redis errors."""
    started = time.monotonic()
    key, wait = await rt.keys.take_create(CREATE_TOKEN_WAIT, token)
    if not math.isinf(wait):
        _count_wait("create", wait, time.monotonic() - started)
    return _Taken(token, key, wait)


async def _give_back(taken: _Taken) -> None:
    """The create token was taken for nothing (the task cannot be created now): its slot is freed at once.
    Best effort: a slot not given back frees itself after ``KIE_TIMEOUT`` and the window."""
    if taken.key is not None:
        with contextlib.suppress(RedisError, OSError):
            await taken.key.budget.cancel("create", taken.token)


def _count_wait(kind: Kind, wait: float, waited: float) -> None:
    if wait > 0:
        metrics.BUDGET_WAITS.labels(kind).inc()
        metrics.BUDGET_DEFERRED.labels(kind).inc()
    elif waited > 0.02:  # more than a round trip or two: it had to wait
        metrics.BUDGET_WAITS.labels(kind).inc()
        metrics.BUDGET_WAIT_SECONDS.labels(kind).observe(waited)


async def _done(key: ProviderKey, kind: Kind, token: str, note: tuple[str, str, int] | None = None) -> None:
    # Best effort: an entry left "in flight" frees its slot by itself after KIE_TIMEOUT, and a lost note only
    # means that a crash before the task's id is recorded ends in the slower recovery (module docstring).
    with contextlib.suppress(RedisError, OSError):
        await key.budget.done(kind, token, note)


def _now() -> datetime:
    return datetime.now(UTC)


def _at(delay: float) -> datetime:
    return _now() + timedelta(seconds=delay)


def _until(when: datetime) -> float:
    return (when - _now()).total_seconds()


def _retry(task: asyncpg.Record, delay: float) -> NoReturn:
    raise Retry(defer=schedule.bounded(delay, _until(task["deadline_at"])))


async def _later(rt: Runtime, task: asyncpg.Record, delay: float, write: bool) -> NoReturn:
    delay = schedule.bounded(delay, _until(task["deadline_at"]))
    if write:
        # Keep next_check_at honest so the sweeper does not count a waiting task as lost.
        await tasks.schedule(rt.pool, task["id"], _at(delay))
    raise Retry(defer=delay)
