"""``POST /v1/webhooks/kie?task=<taskId>&token=<secret>``: the provider's callback.

The callback is a hint, never trusted (docs/PROVIDER.md). A known task with the right per-task token gets an
immediate status check by a worker (a queue poke), which asks the provider itself. The body is read for one
thing only: for a task still ``queued`` (a worker died between the create call and recording its answer), the
provider task id it names is noted in Redis, and the worker adopts it only after a status query proves that the
provider's echo of the request is ours.
"""

from __future__ import annotations

import hmac
import json

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.requests import read_body
from api.services import services
from shared import provider, queue
from shared.errors import NotFound
from shared.ledger import tasks

# Compared against when the task is unknown, so that a miss costs what a hit costs.
_DUMMY_TOKEN = "x" * 32


async def kie_callback(request: Request) -> JSONResponse:
    """Unknown task or wrong token → 404; otherwise poke the task's worker (if the task is still live) → 200
    ``{"ok": true}``. Redis down → 503, so the provider delivers the callback again."""
    svc = services(request)
    task_id = request.query_params.get("task", "")
    token = request.query_params.get("token", "")
    task = await tasks.by_callback(await svc.db(), task_id) if task_id else None
    expected = task["callback_token"] if task is not None else _DUMMY_TOKEN
    if not hmac.compare_digest(token.encode(), expected.encode()) or task is None:
        raise NotFound("no such callback")
    if task["status"] in tasks.LIVE:
        redis = await svc.arq()
        if task["status"] == "queued" and task["provider_task_id"] is None:
            named = _provider_task_id(await read_body(request))
            if named is not None:
                await provider.note_provider_task(redis, svc.settings, task_id, named)
        await queue.poke(redis, svc.settings, task_id)
    return JSONResponse({"ok": True})


def _provider_task_id(body: bytes) -> str | None:
    """``data.taskId`` of a callback body (both families put it there), or None if the body has none."""
    try:
        data = json.loads(body).get("data")
    except (ValueError, AttributeError):
        return None
    named = data.get("taskId") if isinstance(data, dict) else None
    return named if isinstance(named, str) and 0 < len(named) <= 200 else None


routes = [Route("/v1/webhooks/kie", kie_callback, methods=["POST"])]
