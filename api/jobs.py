"""Jobs: ``GET /v1/models``, ``POST /v1/jobs``, ``GET /v1/jobs``, ``GET /v1/jobs/{taskId}``,
``POST /v1/jobs/{taskId}/cancel``.

The submit path is the hot one (benchmarked): the key from the process's cache (api.authcache: no round trip),
one Lua call to Redis for the limits (none for a tier that limits nothing), one Postgres round trip for the
money (task + hold in one SQL function, group-committed), then one Lua call that confirms the limits and writes
the arq job.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.auth import caller
from api.parsing import Fields, idempotency_key, json_object, query_choice, query_limit, request_hash
from api.services import Services, services
from shared import admission, callback_urls, pricing, settlement
from shared.errors import InvalidInput
from shared.ledger import tasks
from shared.pricing import Model


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


async def submit_job(request: Request) -> JSONResponse:
    """``POST /v1/jobs``: hold the price of this input and queue the task → 202 task view (``queued``).

    Parses (the caller, the body, the ``Idempotency-Key``), validates and prices the input
    (:func:`shared.pricing.price`, as a quote does), then admits the task (:func:`shared.admission.admit`: tier
    limits → task + hold in one transaction → confirm or undo → queue; its docstring has the rules) and answers
    it. The task stores the validated input (defaults applied: what the worker sends) and the price breakdown;
    its ``cost`` is the quoted cost, fixed from then on.

    - With an ``Idempotency-Key``, the same key and body answer the first task again with 202 and hold
      nothing more, even at a limit, and even if the price list has since dropped the model or a value it used;
      another body is 409 ``idempotency_conflict``.
    - Limits fail closed: with Redis unreachable the answer is 503. After the commit the task is durable: if
      Redis fails at the enqueue the answer is still 202, and the worker's sweeper enqueues the task.
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
        first = None
        if key is not None:
            first = await admission.first_task(await svc.db(), who.account.id, key, digest, conflict=False)
        if first is not None:
            return JSONResponse(tasks.task_view(first), 202)
        raise
    tier = svc.pricing.tier(who.account.tier)
    want = admission.Request(who.account.id, tier, model, priced, callback_url, key, digest)
    task = await admission.admit(svc, want)
    return JSONResponse(tasks.task_view(task), 202)


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
    a task that left ``queued`` → 409 ``not_cancelable``. Canceling a canceled task answers it again. The
    ending is :func:`shared.settlement.cancel` (the slot's release, the client's webhook)."""
    svc = services(request)
    who = await caller(request, write=True)
    task = await settlement.cancel(
        await svc.db(), svc.settings, request.path_params["task_id"], who.account.id, svc.arq
    )
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
