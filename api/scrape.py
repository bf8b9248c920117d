"""The scrape: ``GET /metrics`` (no auth, as Prometheus expects: keep it on the internal network) renders the API's own
registry, the workers' snapshots from Redis and the scrape-time gauges (see :mod:`shared.fleet_metrics` and :mod:`shared.scrape_state`). With
Postgres or Redis down it still answers 200, without the gauges of that source and with
``creditq_state_source_up{source=...} 0``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.services import services
from shared import fleet_metrics, scrape_state
from shared.errors import Unavailable

T = TypeVar("T")

log = structlog.get_logger("creditq.api")

CONNECT_TIMEOUT_SECONDS = 2.0


async def connected_or_none(connect: Awaitable[T]) -> T | None:
    """The connection, or None when it cannot be had quickly (the scrape goes on without that source)."""
    try:
        return await asyncio.wait_for(connect, CONNECT_TIMEOUT_SECONDS)
    except (Unavailable, TimeoutError):
        return None


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: Prometheus text of the API, its workers and the scrape-time state. Always 200."""
    svc = services(request)
    pool = await connected_or_none(svc.db())
    redis = await connected_or_none(svc.arq())
    state = await scrape_state.ops_state(svc.settings, pool, redis)
    body = scrape_state.render(fleet_metrics.local_collector(svc.settings), state)
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4, headers={"Cache-Control": "no-store"})


routes = [Route("/metrics", metrics_endpoint, methods=["GET"])]
