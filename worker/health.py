"""The provider's reachability as the workers see it, and the last attempt's error on a queued task.

- :func:`note_transient`: a create that failed transiently (the task goes back to ``queued``) writes the error
  on the task (``tasks.last_error``, shown as ``lastError`` in a queued task's view) and, when the provider could
  not be reached at all (connection refused, DNS, connect timeout, no answer), counts one more connection
  failure in Redis (:func:`shared.metrics.record_provider_unreached`). After
  :data:`shared.metrics.PROVIDER_UNREACHABLE_AFTER` in a row, ``/readyz`` says ``"provider": "unreachable"``
  (degraded) and the operator's page says so with the last error.
- :func:`note_reached`: any answer from the provider (a create accepted, a balance polled) starts the count
  again. This process remembers whether it saw a failure, so a healthy fleet pays no Redis write per create.
- :func:`startup_probe`: each worker asks the provider for its balance once at start and logs an *error* when it
  cannot reach it (a wrong ``KIE_BASE_URL`` shows at once, not after a job's deadline).

Best effort throughout: a Redis or Postgres error here is logged and swallowed, never fails a step.
"""

from __future__ import annotations

import asyncio

import httpx
import structlog

from shared import metrics
from shared.errors import ProviderError
from shared.ledger import tasks
from worker.runtime import Runtime

log = structlog.get_logger("creditq.worker")

STARTUP_PROBE_SECONDS = 10.0
_failing = False  # this process saw a connection failure not yet followed by an answer


def is_connection_failure(e: BaseException) -> bool:
    """True when the provider was not reached or did not answer at all (as opposed to answering an error)."""
    cause = e.__cause__ or e.__context__
    return isinstance(cause, httpx.TransportError | TimeoutError | OSError) or isinstance(
        e, httpx.TransportError | TimeoutError | OSError
    )


async def note_unreached(rt: Runtime, e: BaseException) -> int | None:
    """Count one connection failure (Redis); returns the count in a row, None if Redis could not be written."""
    global _failing
    _failing = True
    message = e.message if isinstance(e, ProviderError) else f"{type(e).__name__}: {e}"
    try:
        failures = await metrics.record_provider_unreached(rt.redis, rt.settings, message)
    except Exception as err:
        log.warning("provider.reach_not_recorded", error=f"{type(err).__name__}: {err}")
        return None
    if failures == metrics.PROVIDER_UNREACHABLE_AFTER:
        log.error("provider.unreachable", kie_base_url=rt.settings.kie_base_url, failures=failures, error=message)
    return failures


async def note_reached(rt: Runtime) -> None:
    """The provider answered: start the count again if this process had seen it fail. Never raises but
    CancelledError."""
    global _failing
    if not _failing:
        return
    try:
        await metrics.record_provider_reached(rt.redis, rt.settings)
        _failing = False
    except Exception as err:
        log.warning("provider.reach_not_recorded", error=f"{type(err).__name__}: {err}")


async def note_transient(rt: Runtime, task_id: str, e: ProviderError) -> None:
    """A create failed transiently and the task waits in ``queued``: keep the error on the task (its view's
    ``lastError``) and count a connection failure if it was one. Never raises but CancelledError."""
    try:
        await tasks.note_error(rt.pool, task_id, e.message)
    except asyncio.CancelledError:
        raise
    except Exception as err:
        log.warning("task.last_error_not_recorded", task_id=task_id, error=f"{type(err).__name__}: {err}")
    if is_connection_failure(e):
        await note_unreached(rt, e)


async def startup_probe(rt: Runtime) -> None:
    """Ask the provider for its balance once; log an error naming KIE_BASE_URL when it cannot be reached (and
    count the failure), a warning when it answers with an error. Never raises but CancelledError."""
    global _failing
    try:
        async with asyncio.timeout(STARTUP_PROBE_SECONDS):
            credits = await rt.provider.credits()
    except asyncio.CancelledError:
        raise
    except Exception as e:
        if is_connection_failure(e) or isinstance(e, TimeoutError):
            message = e.message if isinstance(e, ProviderError) else f"{type(e).__name__}: {e}"
            log.error("provider.unreachable_at_start", kie_base_url=rt.settings.kie_base_url, error=message)
            await note_unreached(rt, e)
        else:
            log.warning(
                "provider.probe_failed", kie_base_url=rt.settings.kie_base_url, error=f"{type(e).__name__}: {e}"
            )
        return
    _failing = True  # whatever another worker counted, the provider answers now
    await note_reached(rt)
    log.info("provider.reachable", kie_base_url=rt.settings.kie_base_url, provider_credits=credits)
