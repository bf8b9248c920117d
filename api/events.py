"""``GET /v1/jobs/{taskId}/events``: a job's status as Server-Sent Events (sse-starlette).

At once an event ``status`` with the task view; then one event per change (``status`` when the status changes,
``progress`` when only the progress does), each with the task view; the stream ends after a terminal state. A
``: keep-alive`` comment every :data:`KEEPALIVE_SECONDS` keeps proxies from cutting an idle stream. Each event's
id names the state it shows (``<status>`` or ``<status>:<progress>``), so a client that reconnects with
``Last-Event-ID`` is sent the current view only if it changed since (what it missed), and a reconnect to a task
that ended since ends at once after that view.

The change feed is Postgres ``LISTEN cq_task_events`` (migration 008's trigger notifies every change of a task's
status or progress) on ONE connection per API process (:class:`TaskFeed`), outside the pool: a notification only
wakes the streams of that task, which then read the view from Postgres through the pool (a short query, the
connection given back at once). So a stream holds no database connection while it waits, and a lost
notification (the listener reconnecting, Postgres restarting) only delays an event: every stream also re-reads
every :data:`RESYNC_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import structlog
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.routing import Route

from api.auth import caller
from api.services import Services, services
from shared.errors import Unavailable
from shared.ledger import tasks

log = structlog.get_logger("creditq.api")

CHANNEL = "cq_task_events"
KEEPALIVE_SECONDS = 15.0
RESYNC_SECONDS = 10.0  # a stream re-reads its task this often even without a notification (a lost NOTIFY)
RECONNECT_SECONDS = 2.0


class TaskFeed:
    """One process's listener of ``cq_task_events``: wakes the streams waiting on a task. Started on first use,
    reconnected in the background after a loss. Not thread-safe (one event loop)."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._runner: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    @property
    def streams(self) -> int:
        """How many streams are waiting now."""
        return sum(len(w) for w in self._waiters.values())

    def subscribe(self, task_id: str) -> asyncio.Event:
        """An event set whenever the task may have changed (the caller clears it before reading)."""
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="creditq-task-feed")
        wake = asyncio.Event()
        self._waiters.setdefault(task_id, set()).add(wake)
        return wake

    def unsubscribe(self, task_id: str, wake: asyncio.Event) -> None:
        """Stop waking ``wake``."""
        waiting = self._waiters.get(task_id)
        if waiting is not None:
            waiting.discard(wake)
            if not waiting:
                del self._waiters[task_id]

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        for wake in self._waiters.get(payload, ()):
            wake.set()

    async def _run(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._url, timeout=5)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, ev=lost: ev.set())
                await conn.add_listener(CHANNEL, self._notified)
                self.connected.set()
                # Whatever changed while we were not listening: every stream looks again.
                for waiting in self._waiters.values():
                    for wake in waiting:
                        wake.set()
                await lost.wait()
                log.warning("task_feed.lost", reconnecting=True)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Postgres down: streams keep re-reading on their own; try again soon
                log.warning("task_feed.failed", error=f"{type(e).__name__}: {e}")
            finally:
                self.connected.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(RECONNECT_SECONDS)

    async def close(self) -> None:
        """Stop listening. Idempotent."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(BaseException):
                await self._runner
            self._runner = None


def feed(svc: Services) -> TaskFeed:
    """The process's feed (made on first use, closed with the app)."""
    existing = svc.extras.get("task_feed")
    if not isinstance(existing, TaskFeed):
        existing = svc.extras["task_feed"] = TaskFeed(svc.settings.database_url)
        svc.closers.append(existing.close)
    return existing


def event_id(view: dict[str, Any]) -> str:
    """The id of an event showing ``view``: its status, and its progress when it has one. Pure."""
    progress = view.get("progress")
    return str(view["status"]) if progress is None else f"{view['status']}:{json.dumps(progress, sort_keys=True)}"


def _event(kind: str, view: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(view, separators=(",", ":")), event=kind, id=event_id(view))


async def follow(
    svc: Services, task_id: str, account_id: str, last_event_id: str | None
) -> AsyncIterator[ServerSentEvent]:
    """The events of one stream (module docstring). Ends after a terminal state. A read that finds Postgres
    down waits and tries again (the stream stays open; the keep-alive continues)."""
    hub = feed(svc)
    wake = hub.subscribe(task_id)
    try:
        view = tasks.task_view(await tasks.get(await svc.db(), task_id, account_id))
        if event_id(view) != last_event_id:
            yield _event("status", view)
        while view["status"] not in tasks.TERMINAL:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), RESYNC_SECONDS)
            wake.clear()
            try:
                now = tasks.task_view(await tasks.get(await svc.db(), task_id, account_id))
            except (Unavailable, OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                continue
            if event_id(now) != event_id(view):
                yield _event("status" if now["status"] != view["status"] else "progress", now)
            view = now
    finally:
        hub.unsubscribe(task_id, wake)


async def job_events(request: Request) -> EventSourceResponse:
    """``GET /v1/jobs/{taskId}/events``. The task is looked up before the stream starts, so an unknown task or
    another account's is a plain 404 (as ``GET /v1/jobs/{taskId}``). Raises Unauthenticated, Forbidden,
    NotFound, Unavailable."""
    svc = services(request)
    who = await caller(request)
    task_id = request.path_params["task_id"]
    await tasks.get(await svc.db(), task_id, who.account.id)
    last = request.headers.get("last-event-id")
    return EventSourceResponse(
        follow(svc, task_id, who.account.id, last),
        ping=KEEPALIVE_SECONDS,
        ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


routes = [Route("/v1/jobs/{task_id}/events", job_events, methods=["GET"])]
