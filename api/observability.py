"""Request context and ``GET /metrics``.

:class:`RequestContext` (ASGI middleware, outermost) gives every request a request id: the caller's
``X-Request-ID`` when it is a sane token (1-128 of ``[A-Za-z0-9._:-]``), else a fresh one. The id is bound in
structlog's context variables for the whole request, so every log line the request causes (the ledger's
``task.queued`` and ``money.*`` lines included) carries ``request_id``, and it is echoed in the answer's
``X-Request-ID`` header so a client can quote it. The middleware also counts answers by method and status and
times ``POST /v1/jobs`` (``creditq_submit_seconds``).

``GET /metrics`` (no auth, as Prometheus expects: keep it on the internal network) renders the API's own
registry, the workers' snapshots from Redis and the scrape-time gauges (see :mod:`shared.metrics`). With
Postgres or Redis down it still answers 200, without the gauges of that source and with
``creditq_state_source_up{source=...} 0``.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.services import services
from shared import metrics
from shared.errors import Unavailable

T = TypeVar("T")

log = structlog.get_logger("creditq.api")

HEADER = "x-request-id"
# Label values must stay few whatever clients send: any other method is counted as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
CONNECT_TIMEOUT_SECONDS = 2.0


def request_id(incoming: str | None) -> str:
    """The id for a request: ``incoming`` when it is a sane token, else a new random one. Pure but for the
    randomness."""
    if incoming is not None and _SANE_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


class RequestContext:
    """ASGI middleware: bind ``request_id`` for the request's log lines, echo it as ``X-Request-ID``, count the
    answer, time the submit path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request inside its log context."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        rid = request_id(incoming)
        status = 500  # what the client sees if the app dies before answering
        started = time.perf_counter()

        async def sender(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                await self.app(scope, receive, sender)
            finally:
                method = scope.get("method", "")
                metrics.HTTP_REQUESTS.labels(method if method in _METHODS else "other", str(status)).inc()
                if method == "POST" and scope.get("path") == "/v1/jobs":
                    metrics.SUBMIT_SECONDS.labels(str(status)).observe(time.perf_counter() - started)


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
    state = await metrics.ops_state(svc.settings, pool, redis)
    body = metrics.render(metrics.local_collector(svc.settings), state)
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4, headers={"Cache-Control": "no-store"})


routes = [Route("/metrics", metrics_endpoint, methods=["GET"])]
