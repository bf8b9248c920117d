"""``POST /v1/webhooks/kie?task=<taskId>&token=<secret>``: the provider's callback.

The callback is a hint, never trusted (CONTRACT.md): its body is not even read. A known task with the right
per-task token gets an immediate status check by a worker (a queue poke), which asks the provider itself.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.services import services
from shared import queue
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
        await queue.poke(await svc.arq(), svc.settings, task_id)
    return JSONResponse({"ok": True})


routes = [Route("/v1/webhooks/kie", kie_callback, methods=["POST"])]
