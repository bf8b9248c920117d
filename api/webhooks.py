"""``POST /v1/webhooks/kie?task=<taskId>&token=<secret>``: the provider's callback.

The callback is a hint, never trusted (docs/PROVIDER.md). A known task with the right per-task token gets an
immediate status check by a worker (a queue poke), which asks the provider itself. The body is read by the
task's family adapter for two things only: whether it says the task ended (Suno calls back at stages on the way,
``text`` and ``first``: those poke nothing, the final ``complete`` or ``error`` does), and, for a task still
``queued`` (a worker died between the create call and recording its answer), the provider task id it names,
noted in Redis; the worker adopts it only after a status query proves that the provider's echo of the request is
ours.
"""

from __future__ import annotations

import hmac
import re

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.parsing import parse_object, read_body
from api.services import services
from shared import provider, queue
from shared.errors import CreditqError, NotFound
from shared.ledger import tasks

# Compared against when the task is unknown, so that a miss costs what a hit costs.
_DUMMY_TOKEN = "x" * 32
_PROVIDER_ID = re.compile(r"[\x21-\x7e]{1,200}")


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
        hint = provider.read_callback(task["family"], _json(await read_body(request)))
        recovering = task["status"] == "queued" and task["provider_task_id"] is None
        named = _provider_task_id(hint.provider_task_id)
        if recovering and named is not None:
            await provider.note_provider_task(redis, svc.settings, task_id, named)
        if hint.final or recovering:
            await queue.poke(redis, svc.settings, task_id)
    return JSONResponse({"ok": True})


def _json(body: bytes) -> object:
    """The callback body as JSON, or None if it is not one the edge would take (not a JSON object, nested too
    deep, NUL characters...): the body is only a hint, so a bad one names nothing, it is not refused."""
    try:
        return parse_object(body)
    except CreditqError:
        return None


def _provider_task_id(named: str | None) -> str | None:
    """A provider task id the family's adapter read from a callback, if it looks like one: 1 to 200 visible
    ASCII characters, as the provider's are."""
    return named if named is not None and _PROVIDER_ID.fullmatch(named) else None


routes = [Route("/v1/webhooks/kie", kie_callback, methods=["POST"])]
