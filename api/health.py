"""``GET /healthz`` (the process answers) and ``GET /readyz`` (it can do its work)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.services import Services, services
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


async def _redis(svc: Services) -> tuple[str, str]:
    """Redis's state, and the provider's circuit as the workers record it in Redis."""
    try:
        redis = await svc.arq()
        circuit = await asyncio.wait_for(redis.exists(*circuit_keys(svc.settings)), CHECK_TIMEOUT_SECONDS)
    except Exception:
        return "down", "unknown"
    return "ok", "circuit_open" if circuit else "ok"


async def readyz(request: Request) -> JSONResponse:
    """200 ``{"status": "ok"|"degraded", "checks": {"postgres", "redis", "provider"}}``; 503 with ``"status":
    "down"`` when Postgres or Redis is unreachable (``"postgres": "down"``). An open provider circuit (the
    provider account is out of credits) is ``degraded``: jobs are accepted and wait, so still 200."""
    svc = services(request)
    pg, (rd, provider) = await asyncio.gather(_postgres(svc), _redis(svc))
    checks = {"postgres": pg, "redis": rd, "provider": provider}
    if "down" in (pg, rd):
        return JSONResponse({"status": "down", "checks": checks}, 503)
    return JSONResponse({"status": "degraded" if provider != "ok" else "ok", "checks": checks})


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
