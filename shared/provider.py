"""The KIE.ai client: create a task, read its status, read the account's credits.

One :class:`httpx.AsyncClient` per process (pooled keep-alive connections); the worker hands its own client in so
that shutdown closes it once. Every call is bounded by ``KIE_TIMEOUT`` as a whole, not per socket operation.

The provider answers HTTP 200 with the verdict in the body's ``code`` (docs/PROVIDER.md), except for real 429s and
the odd 5xx from its edge, so both are read: an error HTTP status wins unless the body names a more precise
error code. Errors map onto the one hierarchy of :mod:`shared.errors`:

- :class:`~shared.errors.ProviderTransient`: 429 (``retry_after`` from ``Retry-After``), 455, 5xx except 505,
  timeouts, connection errors, malformed bodies, unknown task states, and "recordInfo is null" (a status query
  that races the task's creation);
- :class:`~shared.errors.ProviderPermanent`: 400, 401, 403, 404, 422, 451, 505 and any other 4xx;
- :class:`~shared.errors.ProviderOutOfCredits`: 402, the provider account is empty.

A task the provider ended in ``fail`` is not an error: :meth:`ProviderClient.status` answers it as
``ProviderStatus(state="failed", ...)``.

:class:`CreateOutcomeUnknown` (a ``ProviderTransient``) says a create request may have reached the provider
without our hearing the answer (read timeout, connection lost after sending, a garbled 2xx body): the caller must
not simply send it again, or the provider could run (and bill) the task twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn

import httpx
import structlog
from redis.asyncio import Redis

from shared import metrics
from shared.config import Settings
from shared.errors import ProviderError, ProviderOutOfCredits, ProviderPermanent, ProviderTransient
from shared.pricing import Model

log = structlog.get_logger("creditq.provider")

# The provider sits behind an edge that answers "error code: 1010" to clients without a browser-like agent.
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
VEO_DEFAULT_ASPECT_RATIO = "16:9"

State = Literal["pending", "succeeded", "failed"]

_JOBS_STATES: dict[str, State] = {
    "waiting": "pending",
    "queuing": "pending",
    "generating": "pending",
    "success": "succeeded",
    "fail": "failed",
}
_VEO_FLAGS: dict[int, State] = {0: "pending", 1: "succeeded", 2: "failed", 3: "failed"}

# Requests that certainly did not reach the provider: safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class CreateOutcomeUnknown(ProviderTransient):
    """A create request may have been accepted, but no answer came back: do not blindly repeat it."""


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    """A provider task as one status query saw it.

    ``urls``: the result files when ``succeeded``. ``fail_code``/``fail_message``: the provider's reason when
    ``failed``. ``progress``: 0-100 when the model reports it. ``param``: the original create request as the
    provider echoes it (used to prove that a provider task is ours), or None.
    """

    state: State
    urls: tuple[str, ...] = ()
    fail_code: str | None = None
    fail_message: str | None = None
    progress: float | None = None
    param: dict[str, Any] | None = field(default=None, compare=False)


def new_http_client(settings: Settings) -> httpx.AsyncClient:
    """The process's HTTP client: pooled, every timeout ``KIE_TIMEOUT``, no redirects, no auth header (the
    provider key is added per request so that the same client may call other hosts without leaking it)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.kie_timeout),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )


class ProviderClient:
    """KIE.ai's API. Not idempotent by itself: :meth:`create` makes a new provider task on every success.

    ``http`` is the process's shared client (closed by its owner); without it the provider client makes and owns
    one, closed by :meth:`aclose`.
    """

    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        self._settings = settings
        self._base = settings.kie_base_url
        self._auth = {"Authorization": f"Bearer {settings.kie_api_key}"}
        self._owns_http = http is None
        self.http = http if http is not None else new_http_client(settings)

    async def aclose(self) -> None:
        """Close the HTTP client if this object made it. Idempotent."""
        if self._owns_http:
            await self.http.aclose()

    async def create(self, model: Model, input: dict[str, Any], callback_url: str | None) -> str:
        """Create the provider task for ``model`` with the client's ``input``; returns the provider's task id.

        Not idempotent: every success is a new (billed) provider task. Raises ProviderPermanent, ProviderTransient,
        ProviderOutOfCredits, and CreateOutcomeUnknown when the request may have created a task unseen.
        """
        if model.family == "veo":
            path = "/api/v1/veo/generate"
            body: dict[str, Any] = {k: v for k, v in input.items() if k != "prompt"}
            body["prompt"] = input.get("prompt")
            body["model"] = model.model
            body.setdefault("aspectRatio", VEO_DEFAULT_ASPECT_RATIO)
        else:
            path = "/api/v1/jobs/createTask"
            body = {"model": model.model, "input": input}
        if callback_url:
            body["callBackUrl"] = callback_url
        data = await self._call("POST", path, json_body=body, create=True)
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise CreateOutcomeUnknown("createTask answered success without a taskId", provider_code=200)
        return task_id

    async def status(self, model: Model, provider_task_id: str) -> ProviderStatus:
        """One status query of a provider task. Read-only, safe to repeat.

        Raises ProviderTransient (including "recordInfo is null" and unknown states), ProviderPermanent.
        """
        path = "/api/v1/veo/record-info" if model.family == "veo" else "/api/v1/jobs/recordInfo"
        data = await self._call("GET", path, params={"taskId": provider_task_id})
        if not isinstance(data, dict):
            raise ProviderTransient(f"{path} answered without a record", provider_code=200)
        return _veo_status(data) if model.family == "veo" else _jobs_status(data)

    async def credits(self) -> float:
        """The provider account's remaining credits. Read-only. Raises ProviderTransient, ProviderPermanent."""
        data = await self._call("GET", "/api/v1/chat/credit")
        if isinstance(data, bool) or not isinstance(data, int | float | str):
            raise ProviderTransient("chat/credit answered without a number", provider_code=200)
        try:
            return float(data)
        except ValueError:
            raise ProviderTransient("chat/credit answered without a number", provider_code=200) from None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        create: bool = False,
    ) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        code: int | None = None
        status: int | None = None
        try:
            try:
                async with asyncio.timeout(self._settings.kie_timeout):
                    resp = await self.http.request(
                        method, self._base + path, json=json_body, params=params, headers=self._auth
                    )
            except _NOT_SENT as e:
                raise ProviderTransient(f"{path}: cannot reach the provider: {type(e).__name__}") from None
            except (httpx.TransportError, TimeoutError) as e:
                # Sent, maybe processed, no answer: only a create call cares (it may have made a task).
                kind = CreateOutcomeUnknown if create else ProviderTransient
                raise kind(f"{path}: no answer from the provider: {type(e).__name__}") from None
            status = resp.status_code
            code, data = _verdict(resp, path, create=create)
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


def _verdict(resp: httpx.Response, path: str, *, create: bool) -> tuple[int, Any]:
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
        _raise(effective, msg or f"HTTP {http} {resp.reason_phrase}")
    if code is None:
        kind = CreateOutcomeUnknown if create else ProviderTransient
        raise kind(f"{path}: answer is not the provider's envelope (HTTP {http})", provider_code=http)
    if code == 200:
        return code, data
    if code == 422 and data is None and not create and "recordinfo" in msg.replace(" ", "").lower():
        raise ProviderTransient(f"{msg} (provider code 422)", provider_code=422)
    _raise(code, msg)


def _raise(code: int, msg: str) -> NoReturn:
    # The message may end up in a task's error.message: the provider's words and code, not our endpoint.
    text = f"{msg} (provider code {code})" if msg else f"provider code {code}"
    if code == 402:
        raise ProviderOutOfCredits(text, provider_code=code)
    if code in (455, 501) or (500 <= code < 600 and code != 505):
        raise ProviderTransient(text, provider_code=code)
    if code == 505 or 400 <= code < 500:
        raise ProviderPermanent(text, provider_code=code)
    raise ProviderTransient(text, provider_code=code)  # 1xx/3xx in a body: not a verdict we know


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


def _json_value(raw: Any) -> Any:
    """A field documented as a JSON string that some answers give as an object."""
    if isinstance(raw, str):
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ProviderTransient("a JSON field of the record is not JSON", provider_code=200) from None
    return raw


def _urls(result: Any) -> tuple[str, ...]:
    if not isinstance(result, dict):
        return ()
    for key in ("resultUrls", "resultUrl", "urls"):
        value = result.get(key)
        if isinstance(value, str) and value:
            return (value,)
        if isinstance(value, list):
            return tuple(u for u in value if isinstance(u, str) and u)
    return ()


def _param(raw: Any) -> dict[str, Any] | None:
    try:
        value = _json_value(raw)
    except ProviderTransient:
        return None
    return value if isinstance(value, dict) else None


def _progress(raw: Any) -> float | None:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    return None


def _text(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    return str(raw)


def _jobs_status(data: dict[str, Any]) -> ProviderStatus:
    state = _JOBS_STATES.get(str(data.get("state", "")))
    if state is None:
        raise ProviderTransient(f"recordInfo: unknown state {data.get('state')!r}", provider_code=200)
    urls = _urls(_json_value(data.get("resultJson"))) if state == "succeeded" else ()
    return ProviderStatus(
        state=state,
        urls=urls,
        fail_code=_text(data.get("failCode")) if state == "failed" else None,
        fail_message=_text(data.get("failMsg")) if state == "failed" else None,
        progress=_progress(data.get("progress")),
        param=_param(data.get("param")),
    )


def _veo_status(data: dict[str, Any]) -> ProviderStatus:
    flag = data.get("successFlag")
    state = _VEO_FLAGS.get(flag) if isinstance(flag, int) and not isinstance(flag, bool) else None
    if state is None:
        raise ProviderTransient(f"record-info: unknown successFlag {flag!r}", provider_code=200)
    urls: tuple[str, ...] = ()
    if state == "succeeded":
        urls = _urls(_json_value(data.get("response"))) or _urls(_json_value(data.get("info"))) or _urls(data)
    return ProviderStatus(
        state=state,
        urls=urls,
        fail_code=_text(data.get("errorCode")) if state == "failed" else None,
        fail_message=_text(data.get("errorMessage")) if state == "failed" else None,
        progress=_progress(data.get("progress")),
        param=_param(data.get("paramJson", data.get("param"))),
    )


# --- Which provider task is ours: a hint kept in Redis -------------------------------------------------------
#
# The provider's task id is recorded in Postgres by ``mark_running`` right after the create call. Two things can
# come between: the worker dies, or Postgres is down. The worker therefore first notes the id in Redis, and the
# API notes the id a provider callback carries for a task that has none yet (the callback URL names our task).
# Either note is only a hint: the worker proves it with a status query whose ``param`` echoes our request.

PROVIDER_HINT_SECONDS = 86_400


def provider_hint_key(settings: Settings, task_id: str) -> str:
    """The Redis key of the provider task id noted for ``task_id``."""
    return f"{settings.queue_name}:ptask:{task_id}"


async def note_provider_task(redis: Redis, settings: Settings, task_id: str, provider_task_id: str) -> None:
    """Note that ``provider_task_id`` may be ``task_id``'s provider task (kept a day). Idempotent; the last
    note wins. Raises redis errors (callers treat the note as best effort)."""
    await redis.set(provider_hint_key(settings, task_id), provider_task_id, ex=PROVIDER_HINT_SECONDS)


async def noted_provider_task(redis: Redis, settings: Settings, task_id: str) -> str | None:
    """The provider task id noted for ``task_id``, or None. Raises redis errors."""
    raw = await redis.get(provider_hint_key(settings, task_id))
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)
