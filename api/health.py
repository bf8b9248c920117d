"""``GET /healthz`` (the process answers) and ``GET /readyz`` (it can do its work)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.services import Services, services
from shared import metrics
from shared.ledger import accounts
from shared.provider_budget import circuit_keys

CHECK_TIMEOUT_SECONDS = 2.0


async def healthz(request: Request) -> JSONResponse:
    """200 while the process serves requests; says nothing about Postgres or Redis."""
    return JSONResponse({"status": "ok"})


async def _postgres(svc: Services) -> str:
    try:
        await asyncio.wait_for(accounts.ping(await svc.db()), CHECK_TIMEOUT_SECONDS)
    except Exception:
        return "down"
    return "ok"


async def _redis(svc: Services) -> tuple[str, str, dict[str, object] | None]:
    """Redis's state, and the provider's as the workers record it in Redis: ``unreachable`` after
    :data:`shared.metrics.PROVIDER_UNREACHABLE_AFTER` connection failures in a row, else ``circuit_open`` while
    the out-of-credits circuit is open, else ``ok``; with the last connection error when there is one."""
    try:
        redis = await svc.arq()
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            circuit = await redis.exists(*circuit_keys(svc.settings))
            reach = await metrics.provider_reach(redis, svc.settings)
    except Exception:
        return "down", "unknown", None
    if reach is not None and reach["unreachable"]:
        return "ok", "unreachable", reach
    return "ok", "circuit_open" if circuit else "ok", None


async def readyz(request: Request) -> JSONResponse:
    """200 ``{"status": "ok"|"degraded", "checks": {"postgres", "redis", "provider"}}``; 503 with ``"status":
    "down"`` when Postgres or Redis is unreachable (``"postgres": "down"``). A provider that the workers cannot
    reach (``"provider": "unreachable"``, with ``"provider": {"failures", "lastError", "at"}`` under
    ``details``) or whose circuit is open (out of credits: ``"circuit_open"``) is ``degraded``: jobs are accepted
    and wait, so still 200."""
    svc = services(request)
    pg, (rd, provider, reach) = await asyncio.gather(_postgres(svc), _redis(svc))
    checks = {"postgres": pg, "redis": rd, "provider": provider}
    if "down" in (pg, rd):
        return JSONResponse({"status": "down", "checks": checks}, 503)
    body: dict[str, object] = {"status": "degraded" if provider != "ok" else "ok", "checks": checks}
    if reach is not None:
        body["details"] = {
            "provider": {"failures": reach["failures"], "lastError": reach["lastError"], "at": reach["at"]}
        }
    return JSONResponse(body)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
