"""Operator endpoints: ``GET /v1/admin/reconcile`` and the operator's page ``GET /admin``.

- ``GET /v1/admin/reconcile[?fix=true]`` (admin bearer token, as every ``/v1/admin`` route): the audit of
  :mod:`shared.ledger.audit`, the very function ``creditq audit`` runs, → 200 ``{"ok", "problems": [{"kind",
  "accountId"?, "taskId"?, "eventId"?, "detail"}]}``. With ``fix=true`` it first runs the same repairs as
  ``creditq audit --fix`` (:func:`shared.repairs.repairing`) and adds ``"fixed": [what each did]``;
  ``problems`` are then those left. Postgres down → 503.
- ``GET /admin``: the page of :mod:`api.admin_page`. The admin token comes as the bearer header or, for a
  browser, as ``?token=`` (kept in the page's self-refresh and its lookup form). 403 while
  ``CREDITQ_ADMIN_TOKEN`` is unset, 401 without the right token. ``?account=<id or externalId>`` adds that
  account's view. The audit shown is at most :data:`AUDIT_MAX_AGE_SECONDS` old (the page reloads every 10 s and
  the audit reads every ledger entry, so an open page must not run it each time); a reconcile refreshes it.
  Postgres or Redis down: the page still answers 200, saying what it could not read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from api import admin_page
from api.accounts import account_view
from api.auth import require_admin
from api.parsing import query_value
from api.scrape import connected_or_none
from api.services import Services, services
from shared import metrics, queue, repairs
from shared.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from shared.ledger import accounts, stats, tasks
from shared.ledger.audit import Report, audit

T = TypeVar("T")

log = structlog.get_logger("creditq.api")

AUDIT_MAX_AGE_SECONDS = 15.0
PAGE_QUERY_TIMEOUT_SECONDS = 5.0
AUDIT_TIMEOUT_SECONDS = 20.0
FAILURE_WINDOW_SECONDS = 86_400.0
HISTORY_STEP_SECONDS = 900.0  # the page's pictures: the last 6 hours in quarter hours
HISTORY_BUCKETS = 24
ACCOUNT_RECENT = 10  # jobs and entries shown with a looked-up account
MAX_REF_LENGTH = 200
PAGE_HEADERS = {
    # The page may carry the admin token in its URL: keep it out of caches, referrers and frames.
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
}


def _flag(request: Request, name: str) -> bool:
    raw = (query_value(request, name) or "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise InvalidInput(f"{name} must be true or false", details=[{"field": name, "message": "must be true or false"}])


async def run_audit(svc: Services, pool: asyncpg.Pool, fix: bool) -> Report:
    """The audit, with ``fix`` the same repairs as ``creditq audit --fix``; each repair is logged and the
    summary recorded for ``creditq_audit_problems`` (best effort). Raises Unavailable."""
    if fix:
        # The API's own Redis for the stuck tasks' slot releases; when it is down, the repairs go on without.
        redis = await connected_or_none(svc.arq())
        async with repairs.repairing(svc.settings, svc.pricing, redis=redis, connect_redis=False) as fixers:
            report = await audit(pool, svc.settings.sweep_seconds, fixers)
    else:
        report = await audit(pool, svc.settings.sweep_seconds)
    for line in report.fixed:
        log.info("audit.fixed", did=line)
    try:
        # The freshest audit is what creditq_audit_problems should show (the workers' run every few minutes).
        await metrics.record_audit(await svc.arq(), svc.settings, (p.kind for p in report.problems))
    except Exception as e:
        log.warning("audit.not_recorded", error=f"{type(e).__name__}: {e}")
    return report


async def reconcile(request: Request) -> JSONResponse:
    """``GET /v1/admin/reconcile[?fix=true]`` → 200 ``{"ok", "problems"}`` (plus ``"fixed"`` with ``fix``).
    Raises Forbidden/Unauthenticated (admin token, api.auth.admin_mount), InvalidInput (bad ``fix``), Unavailable."""
    fix = _flag(request, "fix")
    svc = services(request)
    pool = await svc.db()
    cache = svc.audit_cache
    async with cache.lock:
        report = await run_audit(svc, pool, fix)
        cache.store(report)
    body = report.as_dict()
    if fix:
        body["fixed"] = list(report.fixed)
    if not report.ok:
        log.warning("audit.problems", problems=len(report.problems), kinds=sorted({p.kind for p in report.problems}))
    return JSONResponse(body)


async def _part(data: admin_page.PageData, name: str, read: Callable[[], Awaitable[T]], seconds: float) -> T | None:
    try:
        async with asyncio.timeout(seconds):
            return await read()
    except Exception as e:  # one unreadable part must not take the page down
        data.errors[name] = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return None


async def _page_audit(svc: Services, pool: asyncpg.Pool) -> tuple[Report, float]:
    cache = svc.audit_cache
    async with cache.lock:
        if cache.report is None or time.time() - cache.at > AUDIT_MAX_AGE_SECONDS:
            cache.store(await run_audit(svc, pool, fix=False))
        assert cache.report is not None
        return cache.report, cache.at


async def admin(request: Request) -> HTMLResponse:
    """``GET /admin[?token=][&account=]``: the operator's page. Raises Forbidden/Unauthenticated (a browser, one
    that accepts text/html, gets an HTML page with a token form instead, same status), InvalidInput (an
    over-long account reference)."""
    try:
        query_token = require_admin(request, query=True)
    except (Forbidden, Unauthenticated) as e:
        if "text/html" not in request.headers.get("accept", ""):
            raise
        status = 403 if isinstance(e, Forbidden) else 401
        wrong = request.query_params.get("token") is not None
        return HTMLResponse(admin_page.login(e.message, status == 403, wrong), status, headers=PAGE_HEADERS)
    svc = services(request)
    ref = request.query_params.get("account", "").strip()
    if len(ref) > MAX_REF_LENGTH:
        raise InvalidInput("account is too long", details=[{"field": "account", "message": "too long"}])
    pool = await connected_or_none(svc.db())
    redis = await connected_or_none(svc.arq())
    state = await metrics.ops_state(svc.settings, pool, redis)
    data = admin_page.PageData(
        state=state, account_ref=ref, query_token=query_token, failure_window_seconds=FAILURE_WINDOW_SECONDS
    )
    if pool is None:
        data.errors.update(postgres="not connected", audit="Postgres is not connected")
    else:
        sweep, limit = svc.settings.sweep_seconds, PAGE_QUERY_TIMEOUT_SECONDS
        step, buckets = HISTORY_STEP_SECONDS, HISTORY_BUCKETS
        (by_status, stuck, failures, audited, account, debtors), (samples, history, queue_live) = await asyncio.gather(
            asyncio.gather(
                _part(data, "tasks", lambda: stats.tasks_by_status(pool), limit),
                _part(data, "stuck", lambda: stats.stuck_tasks(pool, sweep), limit),
                _part(data, "failures", lambda: stats.recent_failures(pool, FAILURE_WINDOW_SECONDS), limit),
                _part(data, "audit", lambda: _page_audit(svc, pool), AUDIT_TIMEOUT_SECONDS),
                _lookup(data, svc, pool, ref),
                _part(data, "debtors", lambda: stats.debtors(pool), limit),
            ),
            asyncio.gather(
                _part(data, "failures", lambda: stats.failure_samples(pool, FAILURE_WINDOW_SECONDS), limit),
                _part(data, "history", lambda: stats.history(pool, step, buckets), limit),
                _part(data, "queue", lambda: _queue_live(svc, redis, pool), limit),
            ),
        )
        data.by_status, data.stuck, data.failures, data.account = by_status, stuck, failures, account
        data.debtors = debtors
        data.samples, data.history, data.history_step_seconds, data.queue_live = samples, history, step, queue_live
        if audited is not None:
            data.audit, data.audit_at = audited
    return HTMLResponse(admin_page.render(data), headers=PAGE_HEADERS)


async def _lookup(data: admin_page.PageData, svc: Services, pool: asyncpg.Pool, ref: str) -> dict[str, Any] | None:
    if not ref:
        return None
    try:
        found = await accounts.get_account(pool, ref)
    except NotFound:
        data.account_error = f"no account {ref!r}"
        return None
    except Exception as e:
        data.account_error = f"cannot read the account: {type(e).__name__}"
        return None
    view = await account_view(svc, found)
    try:
        rows, _ = await tasks.list_for_account(pool, found.id, None, ACCOUNT_RECENT, None)
        data.account_jobs = [tasks.task_view(r) for r in rows]
        entries, _ = await accounts.list_entries(pool, found.id, ACCOUNT_RECENT, None)
        data.account_entries = entries  # already entry views
    except Exception as e:
        data.errors["account"] = f"{type(e).__name__}: {e}"
    return view


async def _queue_live(svc: Services, redis: object, pool: asyncpg.Pool) -> tuple[int, int] | None:
    """(live tasks with a queue entry, queue entries in all), or None without Redis."""
    if redis is None:
        return None
    arq = await svc.arq()
    ids, entries = await queue.queued_task_ids(arq, svc.settings)
    return await stats.live_tasks(pool, ids), entries


routes = [
    Route("/admin", admin, methods=["GET"]),
]
# Under /v1/admin, behind the admin token (api.auth.admin_mount).
admin_routes = [Route("/reconcile", reconcile, methods=["GET"])]
