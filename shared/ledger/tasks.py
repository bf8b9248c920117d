"""The task store and the task transactions.

Money moves only in :func:`submit` (task + hold) and :func:`finish` (terminal state + capture or release); each is
one SQL function call, reported once it committed by :mod:`shared.ledger.reports` (log lines, metrics). Everything
else here moves a task's bookkeeping (provider id, next check) and no money.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from shared.db import CONNECTION_ERRORS
from shared.errors import (
    CreditqError,
    Forbidden,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    NotCancelable,
    NotFound,
)
from shared.ledger import cursors, reports
from shared.ledger.accounts import Conn
from shared.ledger.sqlerrors import mapped
from shared.pricing import Model

LIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "canceled")
STATUSES = LIVE + TERMINAL


def new_task_id() -> str:
    return "task_" + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Submitted:
    task: asyncpg.Record
    inserted: bool  # False: an idempotent repeat answered the first task


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """One submit, as the batch function takes it.

    ``input`` is stored on the task and is what the worker sends: the API gives the validated input (defaults
    applied) of :func:`shared.pricing.price`, with its ``cost`` and ``breakdown``; without them the model's
    ``cost`` is held (a batch built in code, e.g. by tests).
    """

    model: Model
    input: dict[str, Any]
    callback_url: str | None
    idempotency_key: str | None
    request_hash: str | None
    task_id: str = field(default_factory=lambda: new_task_id())
    cost: int | None = None
    breakdown: list[dict[str, Any]] | None = None

    @property
    def price(self) -> int:
        """The credits this submit holds."""
        return self.model.cost if self.cost is None else self.cost

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.task_id,
            "model": self.model.model,
            "kind": self.model.kind,
            "family": self.model.family,
            "input": self.input,
            "callback_url": self.callback_url,
            "token": secrets.token_urlsafe(24),
            "cost": self.price,
            "breakdown": self.breakdown if self.breakdown is not None else [{"credits": self.price}],
            "deadline": self.model.deadline_seconds,
            "key": self.idempotency_key,
            "hash": self.request_hash,
        }


async def submit_batch(
    conn: Conn, account_id: str, requests: list[SubmitRequest], contexts: list[contextvars.Context] | None = None
) -> list[Submitted | CreditqError]:
    """Submit several tasks of one account in ONE statement and one transaction (group commit).

    Admitted in list order while available credit lasts: each admitted request gets its own task, hold and
    ``hold`` entry. Per request the result is a Submitted (``inserted`` False for an idempotent repeat, also
    within the batch) or the error it earned: InsufficientCredits, IdempotencyConflict. Raises for the whole
    batch: NotFound (no account), Forbidden (suspended). ``contexts`` (one per request): the context each new
    task is reported in (its log line carries that request's ``request_id``); default the current one.
    """
    async with mapped():
        rows = await conn.fetch(
            "SELECT b.idx, b.outcome, b.available, (b.task).* FROM cq_submit_batch($1, $2::jsonb) b ORDER BY b.idx",
            account_id,
            [r.as_json() for r in requests],
        )
    out: list[Submitted | CreditqError] = []
    for i, (req, r) in enumerate(zip(requests, rows, strict=True)):
        if r["outcome"] == "insufficient":
            out.append(InsufficientCredits(required=req.price, available=r["available"]))
        elif r["outcome"] == "conflict":
            out.append(IdempotencyConflict("this Idempotency-Key was used with another request body"))
        else:
            if r["outcome"] == "inserted":
                if contexts is None:
                    reports.submitted(r)
                else:
                    contexts[i].run(reports.submitted, r)
            out.append(Submitted(r, r["outcome"] == "inserted"))
    return out


async def submit(
    conn: Conn,
    account_id: str,
    model: Model,
    input: dict[str, Any],
    callback_url: str | None,
    idempotency_key: str | None,
    request_hash: str | None,
    task_id: str | None = None,
) -> Submitted:
    """Insert the task and hold its cost: one transaction, one round trip (a batch of one).

    Idempotent by (account, ``idempotency_key``): a repeat with the same ``request_hash`` returns the first task
    with ``inserted`` False and holds nothing more. Raises InsufficientCredits, Forbidden (suspended),
    IdempotencyConflict (same key, other hash), NotFound (no account).
    """
    req = SubmitRequest(model, input, callback_url, idempotency_key, request_hash, task_id or new_task_id())
    (result,) = await submit_batch(conn, account_id, [req])
    if isinstance(result, CreditqError):
        raise result
    return result


@dataclass(slots=True)
class _Waiter:
    """One submit waiting in the batcher: its account, its request, its answer, its log context."""

    account_id: str
    request: SubmitRequest
    future: asyncio.Future[Submitted]
    context: contextvars.Context


def _suspended(account_id: str) -> Forbidden:
    return Forbidden(f"account {account_id} is suspended")


async def submit_multi(
    conn: Conn, items: list[tuple[str, SubmitRequest]], contexts: list[contextvars.Context] | None = None
) -> list[Submitted | CreditqError]:
    """Submit the tasks of several accounts in ONE statement and one transaction (group commit across accounts):
    ``items`` are (account id, request), any accounts, any order.

    Each request's outcome is what :func:`submit_batch` of its own account alone would give, the account's
    requests in their order in ``items``: Submitted (``inserted`` False for an idempotent repeat),
    InsufficientCredits, IdempotencyConflict, and, per request instead of for the batch, NotFound (no account)
    and Forbidden (suspended). The accounts are locked in id order (SQL ``cq_submit_multi``), so two such
    statements never deadlock. Raises for all: what the connection raises, and a value the database refuses
    (InvalidInput, as :func:`~shared.ledger.sqlerrors.mapped` maps it), which rolls the whole statement back.
    ``contexts``: the context each new task is reported in (default the current one)."""
    groups: dict[str, list[int]] = {}
    for i, (account_id, _) in enumerate(items):
        groups.setdefault(account_id, []).append(i)
    payload = [
        {"account": account_id, "tasks": [items[i][1].as_json() for i in where]} for account_id, where in groups.items()
    ]
    async with mapped():
        rows = await conn.fetch(
            "SELECT b.grp, b.idx, b.outcome, b.available, (b.task).* FROM cq_submit_multi($1::jsonb) b "
            "ORDER BY b.grp, b.idx",
            payload,
        )
    out: list[Submitted | CreditqError | None] = [None] * len(items)
    positions = [i for where in groups.values() for i in where]
    for i, r in zip(positions, rows, strict=True):
        account_id, req = items[i]
        outcome = r["outcome"]
        if outcome == "insufficient":
            out[i] = InsufficientCredits(required=req.price, available=r["available"])
        elif outcome == "conflict":
            out[i] = IdempotencyConflict("this Idempotency-Key was used with another request body")
        elif outcome == "no_account":
            out[i] = NotFound(f"account {account_id} not found")
        elif outcome == "suspended":
            out[i] = _suspended(account_id)
        else:
            if outcome == "inserted":
                if contexts is None:
                    reports.submitted(r)
                else:
                    contexts[i].run(reports.submitted, r)
            out[i] = Submitted(r, outcome == "inserted")
    assert all(o is not None for o in out)
    return [o for o in out if o is not None]


class SubmitBatcher:
    """Group commit for one process, across accounts: the submits that arrive while statements are in flight
    wait, then go together in one :func:`submit_multi` (at most ``max_batch`` requests), whatever their accounts.
    At most ``max_statements`` statements are in flight at once, and an account with requests in one is left
    out of the next until it ends, so an account's submits are admitted in arrival order, as one statement at
    a time per account would.

    An idle process's submit goes at once (a batch of one), so batching adds no latency; under load, many
    submits share one commit (one WAL flush) instead of one each, and a hot account's row is locked once per
    statement. Exact: admission, idempotency and errors are per request, as with :func:`submit`, including an
    account that does not exist or is suspended (its requests alone are refused) and a request the database
    refuses: it fails alone and the others commit (:meth:`_isolated`).
    """

    def __init__(self, max_batch: int = 200, max_statements: int = 2) -> None:
        self._max = max_batch
        self._max_statements = max_statements
        self._pending: list[_Waiter] = []
        self._busy: dict[str, int] = {}  # accounts with requests in a statement in flight → how many statements
        self._running = 0
        self._starting = False
        self._pool: Conn = None
        self._drains: set[asyncio.Task[None]] = set()
        #: Statements run (submit_multi calls, the halves of an isolation included): commits per submit.
        self.statements = 0

    async def submit(self, pool: Conn, account_id: str, request: SubmitRequest) -> Submitted:
        """Submit through the process's batch (run on ``pool``). Same result and errors as :func:`submit`."""
        future: asyncio.Future[Submitted] = asyncio.get_running_loop().create_future()
        # The batch runs in a task started from one submitter's context: each request's own context goes along,
        # so that its task.queued line carries its own request_id.
        self._pending.append(_Waiter(account_id, request, future, contextvars.copy_context()))
        self._pool = pool
        self._start()
        return await future

    def _start(self) -> None:
        # One statement starting at a time: it takes its requests when it runs, so the submits that arrive
        # meanwhile (in the same loop iteration: a burst) go in it too.
        if self._starting or self._running >= self._max_statements or not self._pending:
            return
        self._starting = True
        self._running += 1
        drain = asyncio.create_task(self._run(self._pool))
        self._drains.add(drain)  # a strong reference, so the task is not collected mid-flight
        drain.add_done_callback(self._drains.discard)

    def _take(self) -> list[_Waiter]:
        """The next statement's requests, in arrival order: up to ``max_batch``, none of an account that has a
        statement in flight (nor, once one is left waiting, any later request of that account)."""
        taken: list[_Waiter] = []
        left: list[_Waiter] = []
        waiting: set[str] = set(self._busy)
        for w in self._pending:
            if w.account_id in waiting or len(taken) >= self._max:
                waiting.add(w.account_id)
                left.append(w)
            else:
                taken.append(w)
        self._pending = left
        for w in taken:
            self._busy[w.account_id] = self._busy.get(w.account_id, 0) + 1
        return taken

    async def _run(self, pool: Conn) -> None:
        self._starting = False
        batch = self._take()
        if not batch:  # every pending request's account has a statement in flight: its end starts the next
            self._running -= 1
            return
        self._start()  # the other accounts' submits arriving meanwhile may go in a second statement
        try:
            results = await self._isolated(pool, batch)
        except BaseException as e:  # the whole batch failed for a cause they share: each waiter gets it
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(e)
            if not isinstance(e, Exception):
                raise
        else:
            for w, result in zip(batch, results, strict=True):
                if w.future.done():
                    continue
                if isinstance(result, BaseException):
                    w.future.set_exception(result)
                else:
                    w.future.set_result(result)
        finally:
            for w in batch:
                n = self._busy[w.account_id] - 1
                if n:
                    self._busy[w.account_id] = n
                else:
                    del self._busy[w.account_id]
            self._running -= 1
            self._start()

    async def _isolated(self, pool: Conn, batch: list[_Waiter]) -> list[Submitted | BaseException]:
        """The batch's results, each request's outcome its own. A batch whose statement fails for a cause of
        one request (a value the database refuses, a broken invariant) rolled back whole; it is split in halves,
        each tried again, down to the request that fails alone, which gets that error (a value that cannot be
        stored: 422), while every other commits (in a few statements: a poison among n costs about 2·log2(n)).
        Halves go in order, so admission stays in arrival order. Raises, for all, what they share: Postgres
        unreachable."""
        self.statements += 1
        try:
            items = [(w.account_id, w.request) for w in batch]
            return list(await submit_multi(pool, items, [w.context for w in batch]))
        except Exception as e:
            if not _one_requests_fault(e):
                raise
            if len(batch) == 1:
                return [e]
            mid = len(batch) // 2
            return [*await self._isolated(pool, batch[:mid]), *await self._isolated(pool, batch[mid:])]


def _one_requests_fault(e: Exception) -> bool:
    """True when a batch's failure may be one request's doing (so splitting the batch can isolate it): a value
    refused (InvalidInput, as :func:`~shared.ledger.sqlerrors.mapped` turns data exceptions) or any unexpected
    database or encoding error. False for what every request of the batch shares: the connection, and the
    account's own state (no such account, suspended)."""
    if isinstance(e, CreditqError):
        return isinstance(e, InvalidInput)
    return not isinstance(e, (*CONNECTION_ERRORS, OSError, TimeoutError))


async def get(conn: Conn, task_id: str, account_id: str | None = None) -> asyncpg.Record:
    """The task; with ``account_id``, only if it belongs to that account. Raises NotFound."""
    r = await conn.fetchrow(
        "SELECT * FROM tasks WHERE id = $1 AND ($2::text IS NULL OR account_id = $2)", task_id, account_id
    )
    if r is None:
        raise NotFound(f"no task {task_id!r}")
    return r


async def get_by_idempotency_key(conn: Conn, account_id: str, key: str) -> asyncpg.Record | None:
    """The account's task submitted with ``key``, or None. One indexed lookup (the (account, key) unique index)."""
    return await conn.fetchrow("SELECT * FROM tasks WHERE account_id = $1 AND idempotency_key = $2", account_id, key)


async def list_for_account(
    conn: Conn, account_id: str, status: str | None, limit: int, cursor: str | None
) -> tuple[list[asyncpg.Record], str | None]:
    """One page of the account's tasks, newest first (keyset on created_at, id), and the next cursor."""
    after_ts, after_id = cursors.keyset_after(cursor)
    rows = await conn.fetch(
        "SELECT * FROM tasks WHERE account_id = $1 AND ($2::text IS NULL OR status = $2) "
        "AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) "
        "ORDER BY created_at DESC, id DESC LIMIT $5",
        account_id,
        status,
        after_ts,
        after_id,
        limit + 1,
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = cursors.encode_keyset(last["created_at"], last["id"])
    return list(rows[:limit]), next_cursor


async def finish(
    conn: Conn,
    task_id: str,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    from_states: tuple[str, ...] = LIVE,
) -> tuple[asyncpg.Record, bool]:
    """Move a live task to ``status`` and capture (succeeded) or release (failed, canceled) its hold, in one
    transaction. Exactly once: if the task already left ``from_states`` nothing changes and the task is returned
    as it is with ``changed`` False. Raises NotFound."""
    assert status in TERMINAL
    async with mapped():
        r = await conn.fetchrow(
            "SELECT (f.task).*, f.changed FROM cq_finish_task($1, $2, $3, $4, $5, $6) f",
            task_id,
            status,
            list(from_states),
            result,
            error_code,
            error_message,
        )
    assert r is not None
    if r["changed"]:
        reports.finished(r)
    return r, r["changed"]


async def cancel(conn: Conn, task_id: str, account_id: str) -> asyncpg.Record:
    """Cancel a task that is still queued and not being submitted; its hold is released. Idempotent for a task
    already canceled. Raises NotFound (unknown or another account's), NotCancelable."""
    async with mapped():
        r = await conn.fetchrow("SELECT (c.task).*, c.changed FROM cq_cancel_task($1, $2) c", task_id, account_id)
    assert r is not None
    if r["changed"]:
        reports.finished(r)
    if r["changed"] or r["status"] == "canceled":
        return r
    state = "being submitted" if r["status"] == "queued" else r["status"]
    raise NotCancelable(f"task {task_id} is {state}: only a queued task can be canceled")


def task_view(r: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """A task as the API shows it (docs/API.md's task view)."""
    view: dict[str, Any] = {
        "taskId": r["id"],
        "model": r["model"],
        "status": r["status"],
        "cost": r["cost"],
        "charged": r["charged"],
        "createdAt": r["created_at"].isoformat(),
        "updatedAt": r["updated_at"].isoformat(),
    }
    if r["finished_at"] is not None:
        view["finishedAt"] = r["finished_at"].isoformat()
    # Beyond the contract's view: what the cost was made of (None for tasks from before the price breakdown).
    breakdown = r.get("price_breakdown")
    if isinstance(breakdown, str):
        breakdown = json.loads(breakdown)
    if breakdown is not None:
        view["breakdown"] = breakdown
    result = r["result"]
    if isinstance(result, str):
        result = json.loads(result)
    if result is not None:
        view["result"] = result
    if r["error_code"] is not None:
        view["error"] = {"code": r["error_code"], "message": r["error_message"] or ""}
    progress = r.get("progress")
    if progress is not None:
        # The provider's last figure; a task it finished is done, whatever the last poll before the end said.
        view["progress"] = 100 if r["status"] == "succeeded" else int(progress)
    last_error = r.get("last_error")
    if last_error is not None and r["status"] == "queued":
        view["lastError"] = last_error  # why the task still waits: the last create attempt's error
    return view


async def note_error(conn: Conn, task_id: str, message: str) -> None:
    """Keep ``message`` as the task's last attempt error (``lastError`` of a queued task's view). Idempotent;
    changes nothing once the task has ended. One statement."""
    await conn.execute(
        "UPDATE tasks SET last_error = $2 WHERE id = $1 AND status IN ('queued', 'running')", task_id, message[:500]
    )


# --- The worker's bookkeeping: no money moves below. ---------------------------------------------------------


async def claim_submit(conn: Conn, task_id: str, provider_key: str | None = None) -> asyncpg.Record | None:
    """Record the intent to create the provider task, with the public id of the provider key that will create it
    (its status queries use the same key, and so does a recovery after a crash mid-create). Returns the task if
    this caller won the claim, None if the task is not queued, already has a provider task, or has an intent in
    flight (maybe from a crashed worker), or is past its deadline (its ending is the deadline's). The row it
    returns is the whole task, so a caller need not read the task before claiming it."""
    return await conn.fetchrow(
        "UPDATE tasks SET submit_started_at = now(), submit_attempts = submit_attempts + 1, updated_at = now(), "
        "provider_key = coalesce($2, provider_key) "
        "WHERE id = $1 AND status = 'queued' AND submit_started_at IS NULL AND provider_task_id IS NULL "
        "AND deadline_at > now() RETURNING *",
        task_id,
        provider_key,
    )


async def abandon_submit(conn: Conn, task_id: str, next_check_at: datetime, attempted: bool = True) -> None:
    """The create call certainly created nothing (refused, rate-limited, out of credits): clear the intent so
    that a later step may try again at ``next_check_at``. ``attempted`` False: no create call was sent at all
    (no rate token), so the claim is not counted in ``submit_attempts``."""
    await conn.execute(
        "UPDATE tasks SET submit_started_at = NULL, next_check_at = $2, updated_at = now(), "
        "submit_attempts = submit_attempts - CASE WHEN $3::bool THEN 0 ELSE 1 END "
        "WHERE id = $1 AND status = 'queued' AND provider_task_id IS NULL",
        task_id,
        next_check_at,
        attempted,
    )


async def mark_running(conn: Conn, task_id: str, provider_task_id: str, next_check_at: datetime) -> bool:
    """Record the provider's task id: ``queued → running``. False if the task had left ``queued``."""
    r = await conn.fetchval(
        "UPDATE tasks SET status = 'running', provider_task_id = $2, submit_started_at = NULL, "
        "next_check_at = $3, updated_at = now() WHERE id = $1 AND status = 'queued' RETURNING id",
        task_id,
        provider_task_id,
        next_check_at,
    )
    return r is not None


async def schedule(
    conn: Conn,
    task_id: str,
    next_check_at: datetime,
    polled: bool = False,
    *,
    progress: float | None = None,
    query_ok: bool | None = None,
) -> None:
    """Set when the task is next looked at (and count a status query when ``polled``). ``progress``: the
    provider's figure (0-100), kept when given. ``query_ok``: the status query answered a record (True: the
    count of failed queries in a row starts again) or failed (False: it grows); None leaves it. Idempotent
    enough to repeat; a task that left the live states is not touched."""
    await conn.execute(
        "UPDATE tasks SET next_check_at = $2, polls = polls + $3::int, updated_at = now(), "
        "progress = coalesce($4::smallint, progress), "
        "query_errors = CASE WHEN $5::bool THEN 0 WHEN NOT $5::bool THEN query_errors + 1 ELSE query_errors END "
        "WHERE id = $1 AND status IN ('queued', 'running')",
        task_id,
        next_check_at,
        1 if polled else 0,
        None if progress is None else max(0, min(100, round(progress))),
        query_ok,
    )


async def overdue(conn: Conn, grace_seconds: float, limit: int = 5000) -> list[asyncpg.Record]:
    """Live tasks whose next check is more than ``grace_seconds`` late (their queue entry may be lost), and live
    tasks past their deadline; oldest first."""
    return list(
        await conn.fetch(
            "SELECT id, status, deadline_at < now() AS expired FROM tasks "
            "WHERE status IN ('queued', 'running') "
            "AND (next_check_at < now() - make_interval(secs => $1) OR deadline_at < now()) "
            "ORDER BY next_check_at LIMIT $2",
            grace_seconds,
            limit,
        )
    )


async def count_running(conn: Conn) -> int:
    """How many tasks are running at the provider now (every account, every worker)."""
    return int(await conn.fetchval("SELECT count(*) FROM tasks WHERE status = 'running'"))


async def by_callback(conn: Conn, task_id: str) -> asyncpg.Record | None:
    """The task a provider callback names (its token is checked by the caller in constant time)."""
    return await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
