"""Client webhooks: the account's signing secret and a job's delivery log.

- ``GET /v1/account/webhook-secret`` → ``{"secret": "whsec_..."}``, made on first use (a suspended account may
  read it: its jobs still end and are still delivered).
- ``POST /v1/account/webhook-secret/rotate`` → the new secret, with ``previous.expiresAt``: the old one keeps
  signing beside it for 24 h, so a receiver can switch without missing a delivery.
- ``GET /v1/jobs/{taskId}/deliveries`` → ``{"items": [delivery]}``, oldest first.
- ``POST /v1/jobs/{taskId}/deliveries/{webhookId}/retry`` → 202 delivery, due now, scheduled at once.
Another account's task is 404, as everywhere.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.auth import caller
from api.services import Services, services
from shared import queue, webhooks
from shared.ledger import webhooks as outbox

log = structlog.get_logger("creditq.api")


def _secret_view(rows: list[asyncpg.Record]) -> dict[str, Any]:
    current, *older = rows
    view: dict[str, Any] = {"secret": current["secret"]}
    if older:
        view["previous"] = {"expiresAt": older[0]["expires_at"].isoformat()}
    return view


async def get_secret(request: Request) -> JSONResponse:
    """``GET /v1/account/webhook-secret``: the current secret (created now if there is none). Idempotent."""
    who = await caller(request)
    rows = await outbox.secrets(await services(request).db(), who.account.id, webhooks.new_secret())
    return JSONResponse(_secret_view(rows))


async def rotate_secret(request: Request) -> JSONResponse:
    """``POST /v1/account/webhook-secret/rotate``: a new current secret; the previous one signs for 24 h more.
    Not idempotent: each call rotates."""
    who = await caller(request)
    rows = await outbox.rotate(await services(request).db(), who.account.id, webhooks.new_secret())
    return JSONResponse(_secret_view(rows))


async def list_deliveries(request: Request) -> JSONResponse:
    """``GET /v1/jobs/{taskId}/deliveries``: the task's deliveries. Raises NotFound."""
    who = await caller(request)
    rows = await outbox.for_task(await services(request).db(), request.path_params["task_id"], who.account.id)
    return JSONResponse({"items": [outbox.delivery_view(r) for r in rows]})


async def retry_delivery(request: Request) -> JSONResponse:
    """``POST /v1/jobs/{taskId}/deliveries/{webhookId}/retry`` → 202: the delivery is pending and due now, and a
    worker is asked at once (if Redis is down, the delivery sweep finds it). Raises NotFound."""
    svc = services(request)
    who = await caller(request)
    row = await outbox.retry_now(
        await svc.db(), request.path_params["task_id"], who.account.id, request.path_params["webhook_id"]
    )
    await schedule(svc, row["id"], now=True)
    return JSONResponse(outbox.delivery_view(row), 202)


async def schedule(svc: Services, webhook_id: str, now: bool = False) -> None:
    """Ask a worker to attempt the delivery. Best effort: the delivery is in Postgres and the worker's sweep
    re-schedules it if this hint is lost."""
    try:
        await queue.enqueue_delivery(await svc.arq(), svc.settings, webhook_id, now=now)
    except Exception as e:
        log.warning("delivery.enqueue_failed", webhook_id=webhook_id, error=f"{type(e).__name__}: {e}")


routes = [
    Route("/v1/account/webhook-secret", get_secret, methods=["GET"]),
    Route("/v1/account/webhook-secret/rotate", rotate_secret, methods=["POST"]),
    Route("/v1/jobs/{task_id}/deliveries", list_deliveries, methods=["GET"]),
    Route("/v1/jobs/{task_id}/deliveries/{webhook_id}/retry", retry_delivery, methods=["POST"]),
]
