"""The API's one ASGI middleware, :class:`Edge`: what every HTTP request goes through before and after its route.

In order, with one wrapper of ``send`` for all of it:

1. The request id: the caller's ``X-Request-ID`` when it is a sane token (1-128 of ``[A-Za-z0-9._:-]``), else a
   fresh one. It is bound in structlog's context variables for the whole request, so every log line the request
   causes (the ledger's ``task.queued`` and ``money.*`` lines included, and the 500's traceback) carries
   ``request_id``, and it is echoed in the answer's ``X-Request-ID`` header so a client can quote it.
2. The edge checks of the path and query (:func:`api.parsing.edge_refusal`): what no route could use is refused
   before any route runs.
3. The catch-all: an exception no handler took (:data:`api.errors.HANDLERS`) is a bug. It is logged with its
   traceback (event ``request.internal_error``) and answered 500 ``internal_error`` in the one error shape (the server's
   bare 500 would be neither JSON nor logged by us).
4. The count of answers by method and status (``creditq_http_requests_total``) and the time of ``POST /v1/jobs``
   (``creditq_submit_seconds``), whatever happened above.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from api.parsing import edge_refusal
from shared import metrics

log = structlog.get_logger("creditq.api")

HEADER = "x-request-id"
# Label values must stay few whatever clients send: any other method is counted as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id(incoming: str | None) -> str:
    """The id for a request: ``incoming`` when it is a sane token, else a new random one. Pure but for the
    randomness."""
    if incoming is not None and _SANE_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


class Edge:
    """ASGI middleware (the only one): request id and log context, edge checks, the catch-all 500, counts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request inside its log context; refuse it at the edge, or run the app and turn an escaping
        exception into a logged 500 (re-raised when half a response was sent: only the server can end that)."""
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
        started_response = False
        started = time.perf_counter()

        async def sender(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                refusal = edge_refusal(scope)
                if refusal is not None:
                    await refusal(scope, receive, sender)
                    return
                try:
                    await self.app(scope, receive, sender)
                except Exception:
                    log.exception("request.internal_error", method=scope.get("method"), path=scope.get("path"))
                    if started_response:
                        raise
                    response = error_response(500, "internal_error", "internal error; it has been logged")
                    await response(scope, receive, sender)
            finally:
                method = scope.get("method", "")
                metrics.HTTP_REQUESTS.labels(method if method in _METHODS else "other", str(status)).inc()
                if method == "POST" and scope.get("path") == "/v1/jobs":
                    metrics.SUBMIT_SECONDS.labels(str(status)).observe(time.perf_counter() - started)
