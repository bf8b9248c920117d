"""Jobs: ``GET /v1/models``, ``POST /v1/jobs``, ``GET /v1/jobs``, ``GET /v1/jobs/{taskId}``,
``POST /v1/jobs/{taskId}/cancel``.

The submit path is the hot one (benchmarked): one Postgres round trip to authenticate, one Lua call to Redis
for the limits, one Postgres round trip for the money (task + hold in one SQL function), then the queue hint.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api import client_webhooks
from api.auth import Caller, caller
from api.requests import Fields, idempotency_key, json_object, query_choice, query_limit, request_hash
from api.services import Services, services
from shared import callback_urls, limits, pricing, queue
from shared.errors import IdempotencyConflict, InvalidInput, RateLimited, Unavailable
from shared.ledger import tasks
from shared.pricing import Model

log = structlog.get_logger()


async def list_models(request: Request) -> JSONResponse:
    """``GET /v1/models``: the price list, each model with its ``inputs`` and ``pricing`` rules. Public: it is
    what a caller needs before it has a key."""
    models = services(request).pricing.models.values()
    return JSONResponse({"items": [m.public() for m in models]})


def _priced(svc: Services, fields: Fields) -> tuple[Model | None, pricing.Priced | None]:
    """The model and the priced input of a quote or submit body (``model``, ``input``); problems go to
    ``fields`` (the caller raises them all at once). The pricing itself is :func:`shared.pricing.price`."""
    name = fields.string("model", required=True)
    model = svc.pricing.model(name) if name else None
    if name and model is None:
        fields.add("model", f"unknown model {name!r}: see GET /v1/models")
    job_input = fields.obj("input", required=True)
    if job_input is None:
        return model, None
    if model is None:
        # Every model takes input.prompt: say what is wrong with it too, in the same answer.
        prompt = job_input.get("prompt")
        problem = "is required" if prompt is None else pricing.DEFAULT_PROMPT.problem(prompt)
        if problem is not None:
            fields.add("input.prompt", problem)
        return None, None
    try:
        return model, pricing.price(model, job_input)
    except InvalidInput as e:
        fields.details.extend(e.extra["details"])
        return model, None


async def _validate(svc: Services, body: dict[str, Any]) -> tuple[Model, pricing.Priced, str | None]:
    """The model, the priced input and the callback URL of a submit body. Raises InvalidInput listing every
    problem."""
    fields = Fields(body)
    model, priced = _priced(svc, fields)
    callback_url = fields.string("callbackUrl", max_length=callback_urls.MAX_URL_LENGTH)
    if callback_url is not None:
        problem = await callback_urls.problem(callback_url, svc.settings.allow_private_callbacks)
        if problem is not None:
            fields.add("callbackUrl", problem)
    fields.check()
    # check() raised if either is missing; this only tells the type checker.
    assert model is not None
    assert priced is not None
    return model, priced, callback_url


async def quote(request: Request) -> JSONResponse:
    """``POST /v1/quotes`` ``{"model", "input"}``: what a submit of this input would hold now, and why
    → 200 ``{"model", "cost", "breakdown"}``. Holds nothing, changes nothing; the same validation as a submit
    (422 ``validation_error`` naming each bad field)."""
    svc = services(request)
    await caller(request)
    fields = Fields(await json_object(request))
    model, priced = _priced(svc, fields)
    fields.check()
    assert model is not None
    assert priced is not None  # check() raised otherwise
    return JSONResponse({"model": model.model, "cost": priced.cost, "breakdown": priced.breakdown})


async def _repeat(
    svc: Services, who: Caller, key: str | None, digest: str | None, conflict: bool = True
) -> JSONResponse | None:
    """The answer to an idempotent repeat that a limit (or today's price list) refused: the first task; for
    another body 409 (``conflict``) or None."""
    if key is None:
        return None
    first = await tasks.get_by_idempotency_key(await svc.db(), who.account.id, key)
    if first is None:
        return None
    if first["request_hash"] != digest:
        if not conflict:
            return None
        raise IdempotencyConflict("this Idempotency-Key was used with another request body")
    return JSONResponse(tasks.task_view(first), 202)


async def submit_job(request: Request) -> JSONResponse:
    """``POST /v1/jobs``: hold the price of this input and queue the task → 202 task view (``queued``).

    Order: authenticate → validate and price (:func:`shared.pricing.price`, as a quote does) → tier limits
    (Redis) → task + hold (Postgres, one transaction) → queue. The task stores the validated input (defaults
    applied: what the worker sends) and the price breakdown; its ``cost`` is the quoted cost, fixed from then on.

    - Limits fail closed: with Redis unreachable they cannot be enforced, so the answer is 503.
    - A reservation whose submit fails (402, 403, 409, Postgres down) is undone; so is one that turned out to be
      an idempotent repeat (the first task already counted).
    - With an ``Idempotency-Key``, the same key and body answer the first task again with 202 and hold
      nothing more; another body is 409 ``idempotency_conflict``.
    - After the commit the task is durable: if Redis fails at the enqueue the answer is still 202, and the
      worker's sweeper enqueues the task from Postgres.
    """
    svc = services(request)
    who = await caller(request, write=True)
    body = await json_object(request)
    key = idempotency_key(request)
    # The key is bound to the body as sent, not to the validated input: the validated input depends on the price
    # list (its defaults), so hashing it would turn a byte-identical repeat into a conflict after a price change.
    digest = request_hash(body) if key is not None else None
    try:
        model, priced, callback_url = await _validate(svc, body)
    except InvalidInput:
        # A repeat whose first submit was accepted answers that task at its first price, even if the price list
        # has since dropped the model or a value it used.
        repeat = await _repeat(svc, who, key, digest, conflict=False)
        if repeat is not None:
            return repeat
        raise
    account_id = who.account.id
    task_id = tasks.new_task_id()

    redis = await svc.arq()
    try:
        await limits.reserve(
            redis,
            svc.settings,
            account_id,
            svc.pricing.tier(who.account.tier),
            model.kind,
            task_id,
            model.deadline_seconds,
        )
    except RateLimited:
        # A repeat of a request that already made its task must answer that task, even at the limit.
        repeat = await _repeat(svc, who, key, digest)
        if repeat is not None:
            return repeat
        raise

    try:
        wanted = tasks.SubmitRequest(
            model, priced.input, callback_url, key, digest, task_id, cost=priced.cost, breakdown=priced.breakdown
        )
        submitted = await svc.submits.submit(await svc.db(), account_id, wanted)
    except BaseException:
        await _undo(svc, account_id, model.kind, task_id)
        raise
    if not submitted.inserted:
        await _undo(svc, account_id, model.kind, task_id)
        return JSONResponse(tasks.task_view(submitted.task), 202)

    await asyncio.gather(_confirm(svc, account_id, task_id), _enqueue(svc, task_id))
    return JSONResponse(tasks.task_view(submitted.task), 202)


async def _undo(svc: Services, account_id: str, kind: str, task_id: str) -> None:
    try:
        await limits.undo(await svc.arq(), svc.settings, account_id, kind, task_id)
    except Unavailable as e:
        # The slot frees itself at the task's deadline; today's count stays one too high. Not money.
        log.warning("limit reservation not undone", account_id=account_id, task_id=task_id, error=e.message)


async def _confirm(svc: Services, account_id: str, task_id: str) -> None:
    try:
        await limits.confirm(await svc.arq(), svc.settings, account_id, task_id)
    except Unavailable as e:
        # The pending mark expires by itself (limits.PENDING_MS); meanwhile refusals wait a little longer.
        log.warning("limit reservation not confirmed", account_id=account_id, task_id=task_id, error=e.message)


async def _enqueue(svc: Services, task_id: str) -> None:
    try:
        await queue.enqueue(await svc.arq(), svc.settings, task_id)
    except Exception as e:
        # The task and its hold are committed: the sweeper finds it in Postgres and enqueues it.
        log.warning("task not enqueued; the sweeper will", task_id=task_id, error=f"{type(e).__name__}: {e}")


async def get_job(request: Request) -> JSONResponse:
    """``GET /v1/jobs/{taskId}``: the task view; another account's task is 404."""
    who = await caller(request)
    task = await tasks.get(await services(request).db(), request.path_params["task_id"], who.account.id)
    return JSONResponse(tasks.task_view(task))


async def list_jobs(request: Request) -> JSONResponse:
    """``GET /v1/jobs?status=&limit=&cursor=``: the caller's tasks, newest first."""
    who = await caller(request)
    status = query_choice(request, "status", tasks.STATUSES)
    limit = query_limit(request)
    rows, next_cursor = await tasks.list_for_account(
        await services(request).db(), who.account.id, status, limit, request.query_params.get("cursor") or None
    )
    return JSONResponse({"items": [tasks.task_view(r) for r in rows], "nextCursor": next_cursor})


async def cancel_job(request: Request) -> JSONResponse:
    """``POST /v1/jobs/{taskId}/cancel``: a queued task → ``canceled``, its hold released (200 task view);
    a task that left ``queued`` → 409 ``not_cancelable``. Canceling a canceled task answers it again."""
    svc = services(request)
    who = await caller(request, write=True)
    task_id = request.path_params["task_id"]
    task = await tasks.cancel(await svc.db(), task_id, who.account.id)
    if task["callback_url"]:
        # The cancel wrote its webhook into the outbox (the trigger); a worker sends it.
        await client_webhooks.schedule_task(svc, task_id)
    try:
        await limits.release(await svc.arq(), svc.settings, who.account.id, task_id)
    except Unavailable as e:
        log.warning("limit slot not released", account_id=who.account.id, task_id=task_id, error=e.message)
    return JSONResponse(tasks.task_view(task))


async def jobs(request: Request) -> JSONResponse:
    """``/v1/jobs``: GET lists, POST submits (one route, so a wrong method's 405 names both)."""
    return await (submit_job(request) if request.method == "POST" else list_jobs(request))


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/quotes", quote, methods=["POST"]),
    Route("/v1/jobs", jobs, methods=["GET", "POST"]),
    Route("/v1/jobs/{task_id}", get_job, methods=["GET"]),
    Route("/v1/jobs/{task_id}/cancel", cancel_job, methods=["POST"]),
]
