"""Callback delivery: POST the documented body to a finished task's ``callBackUrl``, with retries.

When a task with a callback is accepted, its completion is put on the :class:`~sim.scheduler.Scheduler` at the
task's end time. When due, a delivery is queued; a fixed pool of workers (bounded concurrency, 100 by
default) sends them with ONE shared ``httpx.AsyncClient`` (15 s timeout) owned by the app's lifespan. Any 2xx
answer is a delivery (``callbacksSent``); anything else (another status, a timeout, a refused connection) is
tried again after ``callback_retry_delay * time_scale`` seconds, up to ``callback_tries`` tries in all, then
given up (``callbacksFailed``). Retries wait on the scheduler, not in a worker, so slow receivers cannot stall
other deliveries beyond the pool size. Work started before a ``/__sim/reset`` is dropped and not counted.

A Suno task also calls back at its stages on the way (``text`` at a third of its duration, ``first`` at two
thirds; each a delivery of its own) before the final ``complete`` (or ``error``). ``[sim:callbacks=N]`` delivers
the final callback N times. With ``SimOptions.callback_key`` every POST is signed: ``X-Webhook-Timestamp`` (unix
seconds) and ``X-Webhook-Signature`` = base64(HMAC-SHA256(key, taskId + "." + timestamp)). A URL on the
reserved ``.invalid`` domain (creditq's "nobody listens" URL) is a failed delivery without any network call.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from urllib.parse import urlsplit

import httpx
import structlog

from sim.payloads import callback_body
from sim.scheduler import Scheduler
from sim.state import SimState
from sim.tasks import SimTask

log = structlog.get_logger(__name__)

CALLBACK_TIMEOUT_SECONDS = 15.0
CALLBACK_CONCURRENCY = 100
USER_AGENT = "creditq-sim/0.1 (KIE.ai simulator)"

_Delivery = tuple[SimTask, int, int, int]  # task, try number (1-based), state generation, stage (3 = the end)
FINAL = 3


class CallbackSender:
    """Schedules, queues and delivers callbacks for one simulator instance."""

    def __init__(self, state: SimState, scheduler: Scheduler, concurrency: int = CALLBACK_CONCURRENCY) -> None:
        self._state = state
        self._scheduler = scheduler
        self._concurrency = concurrency
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        self._client: httpx.AsyncClient | None = None

    @staticmethod
    def new_client() -> httpx.AsyncClient:
        """The client the lifespan should own and hand to :meth:`serve`."""
        return httpx.AsyncClient(
            timeout=CALLBACK_TIMEOUT_SECONDS,
            limits=httpx.Limits(max_connections=CALLBACK_CONCURRENCY, max_keepalive_connections=20),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )

    def task_created(self, task: SimTask) -> None:
        """Arrange the callback of a newly accepted task, if it wants one, for its end time."""
        if not task.wants_callback:
            return
        generation = self._state.generation
        if task.family == "suno" and task.fail_code is None:
            for stage in (1, 2):
                self._at(task.stage_at(stage), task, 1, generation, stage)
        for _ in range(task.callbacks):
            self._at(task.finished_at, task, 1, generation, FINAL)

    def _at(self, when: float, task: SimTask, attempt: int, generation: int, stage: int) -> None:
        self._scheduler.call_at(when, lambda: self._enqueue(task, attempt, generation, stage))

    def clear(self) -> None:
        """Drop queued deliveries (the scheduler's pending ones are cleared by its owner)."""
        while True:
            try:
                self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self._queue.task_done()

    @property
    def pending(self) -> int:
        """Deliveries queued and not yet picked up by a worker."""
        return self._queue.qsize()

    def _enqueue(self, task: SimTask, attempt: int, generation: int, stage: int) -> None:
        if self._state.is_current(task, generation):
            self._queue.put_nowait((task, attempt, generation, stage))

    async def serve(self, client: httpx.AsyncClient) -> None:
        """Run the delivery workers with ``client`` until cancelled."""
        self._client = client
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self._concurrency):
                    group.create_task(self._worker())
        finally:
            self._client = None

    async def _worker(self) -> None:
        while True:
            task, attempt, generation, stage = await self._queue.get()
            try:
                await self._deliver(task, attempt, generation, stage)
            except Exception:
                log.exception("sim.callback.worker_error", task_id=task.task_id)
            finally:
                self._queue.task_done()

    def _headers(self, task: SimTask) -> dict[str, str] | None:
        key = self._state.options.callback_key
        if not key:
            return None
        stamp = str(int(time.time()))
        mac = hmac.new(key.encode(), f"{task.task_id}.{stamp}".encode(), hashlib.sha256).digest()
        return {"X-Webhook-Timestamp": stamp, "X-Webhook-Signature": base64.b64encode(mac).decode()}

    async def _deliver(self, task: SimTask, attempt: int, generation: int, stage: int) -> None:
        client = self._client
        url = task.callback_url
        if client is None or url is None or not self._state.is_current(task, generation):
            return
        body = callback_body(task, self._state.balance, stage)
        status: int | None = None
        error: str | None = None
        try:
            if (urlsplit(url).hostname or "").endswith(".invalid"):
                raise OSError("reserved .invalid host: nobody listens there")
            response = await client.post(url, json=body, headers=self._headers(task))
            status = response.status_code
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if not self._state.is_current(task, generation):
            return
        stats = self._state.stats
        stats.callback_attempts += 1
        if status is not None and 200 <= status < 300:
            stats.callbacks_sent += 1
            return
        options = self._state.options
        if attempt < options.callback_tries:
            delay = options.callback_retry_delay * options.time_scale
            log.info("sim.callback.retry", task_id=task.task_id, attempt=attempt, status=status, error=error)
            self._at(self._state.clock() + delay, task, attempt + 1, generation, stage)
            return
        stats.callbacks_failed += 1
        log.warning("sim.callback.gave_up", task_id=task.task_id, tries=attempt, status=status, error=error)
