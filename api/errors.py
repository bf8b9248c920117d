"""Every error becomes one JSON shape, here and nowhere else: ``{"error": {"code", "message", ...extra}}``.

- :class:`~shared.errors.CreditqError`: its ``status`` and ``code``, its ``extra`` inside the error object
  (``required``/``available``, ``details``, ``retryAfter`` with a ``Retry-After`` header).
- Starlette's 404/405 for unknown routes and methods: ``not_found`` / ``method_not_allowed``.
- A connection error that escaped the ledger (asyncpg, redis): 503 ``unavailable``.
- Anything else is a bug: 500 ``internal_error``, logged with its traceback (the catch-all of
  :class:`api.middleware.Edge`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler

from shared.db import CONNECTION_ERRORS
from shared.errors import CreditqError, RateLimited, Unavailable

log = structlog.get_logger("creditq.api")

UNAVAILABLE_MESSAGE = "a service creditq depends on (Postgres or Redis) is unreachable; try again shortly"
# An outage makes every request fail the same way: log it at most this often.
_OUTAGE_LOG_SECONDS = 5.0
_last_outage_log = 0.0


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The one error shape."""
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status, headers=headers)


def _note_outage(request: Request, error: BaseException) -> None:
    global _last_outage_log
    now = time.monotonic()
    if now - _last_outage_log >= _OUTAGE_LOG_SECONDS:
        _last_outage_log = now
        log.warning("request.unavailable", path=request.url.path, error=str(error))


def _unavailable() -> JSONResponse:
    # The detail (which host, which variable) is for operators' logs and /readyz, not for API callers.
    return error_response(503, "unavailable", UNAVAILABLE_MESSAGE, {"Retry-After": "1"})


async def creditq_error(request: Request, exc: Exception) -> Response:
    """A CreditqError: its status, code and extra fields."""
    assert isinstance(exc, CreditqError)
    if isinstance(exc, Unavailable):
        _note_outage(request, exc)
        return _unavailable()
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    if exc.status >= 500:
        # A CreditqError with no API status of its own (a ConfigError, a ProviderError) reaching a request
        # handler is a bug in the handler, not the caller's fault.
        log.error("request.unexpected_error", path=request.url.path, error=exc.message, exc_info=exc)
    return error_response(exc.status, exc.code, exc.message, headers, **exc.extra)


async def connection_error(request: Request, exc: Exception) -> Response:
    """Postgres or Redis went away under a request: 503."""
    _note_outage(request, exc)
    return _unavailable()


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTP errors (no such route: 404, wrong method: 405) in the one shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(404, "not_found", f"no such endpoint: {request.url.path}", exc.headers)
    if exc.status_code == 405:
        return error_response(
            405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}", exc.headers
        )
    return error_response(exc.status_code, "http_error", str(exc.detail), exc.headers)


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up while sending its body: nobody will read the answer, and it is not our bug."""
    return error_response(400, "client_disconnected", "the client closed the connection before its body arrived")


HANDLERS: dict[Any, ExceptionHandler] = {
    ClientDisconnect: client_gone,
    CreditqError: creditq_error,
    HTTPException: http_error,
    RedisConnectionError: connection_error,
    RedisTimeoutError: connection_error,
    **dict.fromkeys(CONNECTION_ERRORS, connection_error),
}
