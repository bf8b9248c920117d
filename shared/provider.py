"""The KIE.ai client: create a task, read its status, read the account's credits, with any configured key.

One :class:`httpx.AsyncClient` per process (pooled keep-alive connections); the worker hands its own client in so
that shutdown closes it once. Every call is bounded by ``KIE_TIMEOUT`` as a whole, not per socket operation.

What differs between the provider's families (endpoints, request bodies, record and callback shapes) lives in
the family adapters (:mod:`shared.families`); this module speaks the envelope they share. The provider answers
HTTP 200 with the verdict in the body's ``code``, except for real 429s and the odd 5xx from its edge, so both
are read: an error HTTP status wins unless the body names a more precise error code. The family's
:meth:`~shared.families.base.Family.classify` says what an error answer is, mapped onto :mod:`shared.errors`:

- :class:`~shared.errors.ProviderTransient`: look again later. Every failed status query (401, 404,
  "recordInfo is null" / "record is null", any other body code, 5xx, timeouts: the task may still finish and be
  billed, only the provider's verdict or the deadline ends it); on a create 429 (``retry_after`` from
  ``Retry-After`` when there is one; the body-code style has none), 455, 5xx except 505, connection errors;
  malformed bodies and unknown task states.
- :class:`~shared.errors.ProviderAccountRefused` (and its :class:`~shared.errors.ProviderOutOfCredits` for
  402): a create refused for the key or account (401, 402, 433): open that key's circuit, keep the task queued.
- :class:`~shared.errors.ProviderPermanent`: a create refused for the task itself (400, 404, 422, 451, 505...).

A task the provider ended in failure is not an error: :meth:`ProviderClient.status` answers it as
``ProviderStatus(state="failed", ...)``.

:class:`CreateOutcomeUnknown` (a ``ProviderTransient``) says a create request may have reached the provider
without our hearing the answer (read timeout, connection lost after sending, a garbled 2xx body): the caller must
not simply send it again, or the provider could run (and bill) the task twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any, NoReturn

import aiohttp
import httpx
import structlog
from httpx_aiohttp import AiohttpTransport
from redis.asyncio import Redis

from shared import families, metrics, redis_keys
from shared.config import Settings
from shared.errors import (
    ProviderAccountRefused,
    ProviderError,
    ProviderOutOfCredits,
    ProviderPermanent,
    ProviderTransient,
)
from shared.families import CallbackHint, Family, ProviderStatus
from shared.pricing import Model

__all__ = [
    "USER_AGENT",
    "CallbackHint",
    "CreateOutcomeUnknown",
    "ProviderClient",
    "ProviderStatus",
    "new_http_client",
    "read_callback",
]

log = structlog.get_logger("creditq.shared")

# The provider sits behind an edge that answers "error code: 1010" to clients without a browser-like agent.
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"

# Requests that certainly did not reach the provider: safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
# The same, said by aiohttp under the transport (the httpx error's cause): it failed to connect, timed out getting
# or opening a connection, or the URL is not one it can send to.
_AIOHTTP_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.InvalidURL)


def _not_sent(e: httpx.TransportError) -> bool:
    """Did the request certainly not reach the provider? Through the aiohttp transport every httpx error stands
    for an aiohttp one (its ``__cause__``), and the transport maps a connection dropped after the request went
    out (``ServerDisconnectedError``, a reset) to ``httpx.ConnectTimeout`` as it maps a failed connect: so the
    aiohttp error is what says. A create that might have arrived must never be sent again."""
    cause = e.__cause__
    if isinstance(cause, aiohttp.ClientError):
        return isinstance(cause, _AIOHTTP_NOT_SENT)
    return isinstance(e, _NOT_SENT)


class CreateOutcomeUnknown(ProviderTransient):
    """A create request may have been accepted, but no answer came back: do not blindly repeat it."""


# How long an idle pooled connection may be reused: less than the idle timeout of common servers (uvicorn's 5 s,
# nginx's 75 s), so that a create is never written on a connection the server is closing at that instant. Such a
# create fails after it may have been sent (a reset), so it is "outcome unknown" and costs its task a wait until its
# deadline and a refund (seen in bench.paced with httpx's default, 5 s, against the simulator's uvicorn).
KEEPALIVE_SECONDS = 4.0


def new_http_client(settings: Settings) -> httpx.AsyncClient:
    """The process's HTTP client for the provider: pooled, every timeout ``KIE_TIMEOUT``, no redirects, no auth
    header (the provider key is added per request so that the same client may call other hosts without leaking
    it). httpx's API on aiohttp's connection pool (``httpx-aiohttp``): with the worker's many steps in flight,
    httpcore's pool spent ~3.8 ms of CPU per request against aiohttp's ~0.65 (BENCHMARKS.md). When a proxy is
    configured in the environment (``HTTPS_PROXY``...), httpx's own transport is used, which honours it."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=50, keepalive_expiry=KEEPALIVE_SECONDS)
    proxied = bool(urllib.request.getproxies())
    return httpx.AsyncClient(
        transport=None if proxied else AiohttpTransport(limits=limits),
        timeout=httpx.Timeout(settings.kie_timeout),
        limits=limits,
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )


def _name(e: httpx.TransportError) -> str:
    """The error's name for a message: the aiohttp error's when the transport's mapping hides it (a dropped
    connection is no ``ConnectTimeout``)."""
    cause = e.__cause__
    return type(cause).__name__ if isinstance(cause, aiohttp.ClientError) else type(e).__name__


def read_callback(family: str, body: Any) -> CallbackHint:
    """A provider callback body of a task of ``family``, read by its adapter as a hint. Never raises."""
    return families.get(family).read_callback(body)


class ProviderClient:
    """KIE.ai's API. Not idempotent by itself: :meth:`create` makes a new provider task on every success.

    ``http`` is the process's shared client (closed by its owner); without it the provider client makes and owns
    one, closed by :meth:`aclose`. Each call takes the provider key to use (``key``, a secret); by default the
    first of the settings' keys.
    """

    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        self._settings = settings
        self._base = settings.kie_base_url
        self._default_key = settings.provider_keys[0]
        self._owns_http = http is None
        self.http = http if http is not None else new_http_client(settings)

    async def aclose(self) -> None:
        """Close the HTTP client if this object made it. Idempotent."""
        if self._owns_http:
            await self.http.aclose()

    async def create(
        self, model: Model, input: dict[str, Any], callback_url: str | None, key: str | None = None
    ) -> str:
        """Create the provider task for ``model`` with the client's ``input``; returns the provider's task id.

        Not idempotent: every success is a new (billed) provider task. Raises ProviderPermanent,
        ProviderTransient, ProviderAccountRefused (ProviderOutOfCredits for 402), and CreateOutcomeUnknown when
        the request may have created a task unseen.
        """
        family = families.get(model.family)
        req = family.create_request(model, input, callback_url)
        data = await self._call(family, "POST", req.path, key, json_body=req.body, create=True)
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise CreateOutcomeUnknown(f"{req.path} answered success without a taskId", provider_code=200)
        return task_id

    async def status(self, model: Model, provider_task_id: str, key: str | None = None) -> ProviderStatus:
        """One status query of a provider task. Read-only, safe to repeat.

        Raises ProviderTransient for every answer that is not a readable record: nothing a status query answers
        but the record's own verdict ends a task.
        """
        family = families.get(model.family)
        data = await self._call(family, "GET", family.status_path, key, params={"taskId": provider_task_id})
        return family.read_record(data)

    async def credits(self, key: str | None = None) -> float:
        """The provider account's remaining credits. Read-only. Raises ProviderTransient, ProviderPermanent."""
        data = await self._call(None, "GET", "/api/v1/chat/credit", key)
        if isinstance(data, bool) or not isinstance(data, int | float | str):
            raise ProviderTransient("chat/credit answered without a number", provider_code=200)
        try:
            return float(data)
        except ValueError:
            raise ProviderTransient("chat/credit answered without a number", provider_code=200) from None

    async def _call(
        self,
        family: Family | None,
        method: str,
        path: str,
        key: str | None,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        create: bool = False,
    ) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        code: int | None = None
        status: int | None = None
        auth = {"Authorization": f"Bearer {self._default_key if key is None else key}"}
        try:
            try:
                async with asyncio.timeout(self._settings.kie_timeout):
                    resp = await self.http.request(
                        method, self._base + path, json=json_body, params=params, headers=auth
                    )
            except httpx.TransportError as e:
                if _not_sent(e):
                    raise ProviderTransient(f"{path}: cannot reach the provider: {_name(e)}") from None
                # Sent, maybe processed, no answer: only a create call cares (it may have made a task).
                kind = CreateOutcomeUnknown if create else ProviderTransient
                raise kind(f"{path}: no answer from the provider: {_name(e)}") from None
            except TimeoutError as e:
                # Sent, maybe processed, no answer: only a create call cares (it may have made a task).
                kind = CreateOutcomeUnknown if create else ProviderTransient
                raise kind(f"{path}: no answer from the provider: {type(e).__name__}") from None
            status = resp.status_code
            code, data = _verdict(family or _ACCOUNT, resp, path, create=create)
            return data
        except ProviderError as e:
            code = code if code is not None else e.provider_code
            outcome = type(e).__name__
            raise
        finally:
            seconds = time.perf_counter() - started
            metrics.observe_provider_call(path, code, outcome, seconds)
            # The key never reaches a log line: only the endpoint, the verdict and the latency.
            log.info("kie.call", endpoint=path, http=status, code=code, outcome=outcome, ms=round(seconds * 1000, 1))


class _AccountCalls(Family):
    """Calls that belong to no family (the credit balance): a refusal there is what it says (401 is the key's
    fault, not a passing state of a task)."""

    name = "account"

    def classify(self, code: int, msg: str, *, create: bool) -> families.ErrorClass:
        return super().classify(code, msg, create=True)


_ACCOUNT = _AccountCalls()


def _verdict(family: Family, resp: httpx.Response, path: str, *, create: bool) -> tuple[int, Any]:
    """The envelope's (code, data), or the matching ProviderError."""
    http = resp.status_code
    body: Any = None
    with contextlib.suppress(ValueError):
        body = resp.json()
    code: int | None = None
    msg = ""
    data: Any = None
    if isinstance(body, dict):
        raw = body.get("code")
        if isinstance(raw, int) and not isinstance(raw, bool):
            code = raw
        elif isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 6:
            code = int(raw)
        msg = str(body.get("msg") or body.get("message") or "")
        data = body.get("data")
    if http == 429 or code == 429:
        raise ProviderTransient(
            f"{path}: rate limited",
            provider_code=429,
            retry_after=_retry_after(resp.headers.get("retry-after")),
        )
    if not 200 <= http < 300:
        # An error status from the provider or its edge; a body code other than 200 says it more precisely.
        effective = code if code not in (None, 200) else http
        _raise(family, effective, msg or f"HTTP {http} {resp.reason_phrase}", create=create)
    if code is None:
        kind = CreateOutcomeUnknown if create else ProviderTransient
        raise kind(f"{path}: answer is not the provider's envelope (HTTP {http})", provider_code=http)
    if code == 200:
        return code, data
    _raise(family, code, msg, create=create)


def _raise(family: Family, code: int, msg: str, *, create: bool) -> NoReturn:
    # The message may end up in a task's error.message: the provider's words and code, not our endpoint.
    text = f"{msg} (provider code {code})" if msg else f"provider code {code}"
    verdict = family.classify(code, msg, create=create)
    if verdict == "account":
        kind: type[ProviderError] = ProviderOutOfCredits if code == 402 else ProviderAccountRefused
        raise kind(text, provider_code=code)
    if verdict == "permanent":
        raise ProviderPermanent(text, provider_code=code)
    raise ProviderTransient(text, provider_code=code)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# --- Which provider task is ours: a hint kept in Redis -------------------------------------------------------
#
# The provider's task id is recorded in Postgres by ``mark_running`` right after the create call. Two things can
# come between: the worker dies, or Postgres is down. The worker therefore first notes the id in Redis, and the
# API notes the id a provider callback carries for a task that has none yet (the callback URL names our task).
# Either note is only a hint: the worker proves it with a status query whose ``param`` echoes our request.

PROVIDER_HINT_SECONDS = 86_400


def provider_hint_key(settings: Settings, task_id: str) -> str:
    """The Redis key of the provider task id noted for ``task_id``."""
    return redis_keys.provider_hint(settings.queue_name, task_id)


def provider_note(settings: Settings, task_id: str, provider_task_id: str) -> tuple[str, str, int]:
    """The note that ``provider_task_id`` may be ``task_id``'s provider task, as (Redis key, value, seconds to
    keep it): what :func:`note_provider_task` writes, for a caller that writes it along with something else
    (the worker, with the create's budget token: ``ProviderBudget.done(..., note=...)``)."""
    return provider_hint_key(settings, task_id), provider_task_id, PROVIDER_HINT_SECONDS


async def note_provider_task(redis: Redis, settings: Settings, task_id: str, provider_task_id: str) -> None:
    """Note that ``provider_task_id`` may be ``task_id``'s provider task (kept a day). Idempotent; the last
    note wins. Raises redis errors (callers treat the note as best effort)."""
    key, value, seconds = provider_note(settings, task_id, provider_task_id)
    await redis.set(key, value, ex=seconds)


async def noted_provider_task(redis: Redis, settings: Settings, task_id: str) -> str | None:
    """The provider task id noted for ``task_id``, or None. Raises redis errors."""
    raw = await redis.get(provider_hint_key(settings, task_id))
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)
