"""The simulator's ASGI app: routes, auth, rate limits, credits, and the lifespan running the background work.

Provider endpoints (``docs/PROVIDER.md``; all of them in ``docs/SIMULATOR.md``), all behind ``Authorization: Bearer <key>``:

- ``POST /api/v1/jobs/createTask`` ``{"model", "input": {..., "prompt"}, "callBackUrl"?}`` → ``data.taskId``
  (32 hex characters).
- ``GET /api/v1/jobs/recordInfo?taskId=`` → the task record (see :func:`sim.payloads.jobs_record`).
- ``POST /api/v1/veo/generate`` ``{"prompt", "model"?: "veo3" (default) | "veo3_fast" | any, "aspectRatio"?,
  "callBackUrl"?}`` → ``data.taskId`` (``veo_<32 hex>``).
- ``GET /api/v1/veo/record-info?taskId=`` → the Veo record (see :func:`sim.payloads.veo_record`).
- ``POST /api/v1/generate`` ``{"prompt", "model"?: "V4_5" (default) | ..., "customMode"?, "instrumental"?,
  "style"?, "title"?, "callBackUrl"}`` (Suno; ``callBackUrl`` required) → ``data.taskId``.
- ``GET /api/v1/generate/record-info?taskId=`` → the Suno record (see :func:`sim.payloads.suno_record`).
- ``GET /api/v1/chat/credit`` → ``data`` = the balance (not rate limited).

With ``--strict`` (:mod:`sim.models`) unknown models and fields a model does not take are refused with body code
422. With ``--rate-limit-style body`` the limits answer HTTP 200 with body code 429 and no ``Retry-After``.

Every answer is the envelope ``{"code", "msg", "data"}`` with HTTP 200 and the verdict in ``code`` (401 bad
or missing key, 400 unreadable body or missing ``taskId``, 422 missing ``model``/``input``/``prompt``, 402
balance below ``cost_per_task``, 404 ``Task not found``), except: rate limiting (and ``[sim:create=429]``)
is a real HTTP 429 with a ``Retry-After`` header and code 429, and a ``[sim:flaky]`` task's every second
status query is a real HTTP 500 with code 500.

Simulator extras on status queries (see :mod:`sim.directives`): on every second query of its task
``[sim:hang=S]`` answers only after ``S`` seconds, ``[sim:garbage]`` answers HTTP 200 with a non-JSON body, and
``[sim:query=CODE]`` answers HTTP ``CODE`` with code ``CODE`` (429 with ``Retry-After: 1``); ``[sim:state=NAME]``
reports the state ``NAME`` for the first half of the task's duration.

Simulator endpoints, without auth: ``GET /__sim/stats``, ``POST /__sim/reset`` (clears tasks, stats, rate
windows and pending callbacks and puts the balance back to ``SimOptions.credits``; → ``{"ok": true}``) and the
simulator extra ``POST /__sim/credits`` ``{"credits": N}`` that sets the balance (→ ``{"ok": true, "credits":
N}``), used to simulate running out and topping up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sim.callbacks import CallbackSender
from sim.directives import parse_directives
from sim.models import STRING_INPUT, strict_refusal
from sim.options import SimOptions
from sim.payloads import envelope, jobs_record, number, suno_record, veo_record
from sim.scheduler import Scheduler
from sim.state import SimState, SlidingWindowLimiter, retry_after_header
from sim.tasks import DEFAULT_SECONDS, Family, SimTask, infer_kind

__all__ = ["SimOptions", "create_app"]

DEFAULT_VEO_MODEL = "veo3"
DEFAULT_SUNO_MODEL = "V4_5"
# "Not yet known" answers of the status endpoints, as the provider words them.
_NULL_MESSAGES: dict[str, str] = {"jobs": "recordInfo is null", "veo": "record is null", "suno": "recordInfo is null"}

# Messages of the codes a ``[sim:create=CODE]`` directive may ask for.
_CREATE_MESSAGES = {
    400: "Bad request.",
    401: "Unauthorized: a valid bearer API key is required.",
    402: "Insufficient credits: the account balance is too low for this task.",
    404: "Not found.",
    422: "Validation error: the input was rejected.",
    429: "Rate limit exceeded: too many requests, try again later.",
    433: "The usage limit of this API key has been reached.",
    451: "The source image could not be fetched.",
    455: "Service unavailable: the system is under maintenance.",
    500: "Internal server error.",
    501: "Generation failed.",
    505: "The feature is disabled.",
}


class _BadRequest(Exception):
    """A request the simulator refuses with body code ``code``."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def _answer(
    code: int, msg: str, data: object = None, status: int = 200, retry_after: str | None = None
) -> JSONResponse:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return JSONResponse(envelope(code, msg, data), status_code=status, headers=headers)


class _Simulator:
    """The request handlers of one app, sharing its state, scheduler and callback sender."""

    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.state = SimState(options)
        self.scheduler = Scheduler(self.state.clock)
        self.callbacks = CallbackSender(self.state, self.scheduler)

    # -- shared checks --

    def _caller_key(self, request: Request) -> str | None:
        """The bearer key of an acceptable caller, or None (missing, empty or not ``options.api_key``)."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        accepted = self.options.api_keys
        if accepted is not None and not any(hmac.compare_digest(token.encode(), k.encode()) for k in accepted):
            return None
        return token

    def _rate_limited(self, limiter: SlidingWindowLimiter, key: str) -> JSONResponse | None:
        wait = limiter.hit(key)
        if wait is None:
            return None
        self.state.stats.rate_limited += 1
        self.state.key_stats(key)["rateLimited"] += 1
        return self._too_many(retry_after_header(wait))

    def _too_many(self, retry_after: str) -> JSONResponse:
        """A 429 in the configured style: HTTP 429 with ``Retry-After``, or HTTP 200 with body code 429."""
        if self.options.rate_limit_style == "body":
            return _answer(429, _CREATE_MESSAGES[429])
        return _answer(429, _CREATE_MESSAGES[429], status=429, retry_after=retry_after)

    @staticmethod
    async def _json_object(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise _BadRequest(400, "Invalid JSON body.") from exc
        if not isinstance(body, dict):
            raise _BadRequest(400, "The request body must be a JSON object.")
        return body

    @staticmethod
    def _callback_url(body: dict[str, Any]) -> str | None:
        url = body.get("callBackUrl")
        if url is None or url == "":
            return None
        if not isinstance(url, str):
            raise _BadRequest(422, "callBackUrl must be a string.")
        return url

    # -- creates --

    async def create_task(self, request: Request) -> JSONResponse:
        """``POST /api/v1/jobs/createTask``."""
        return await self._create(request, "jobs")

    async def veo_generate(self, request: Request) -> JSONResponse:
        """``POST /api/v1/veo/generate``."""
        return await self._create(request, "veo")

    async def suno_generate(self, request: Request) -> JSONResponse:
        """``POST /api/v1/generate`` (Suno)."""
        return await self._create(request, "suno")

    async def _create(self, request: Request, family: Family) -> JSONResponse:
        key = self._caller_key(request)
        if key is None:
            return _answer(401, _CREATE_MESSAGES[401])
        limited = self._rate_limited(self.state.create_limiter, key)
        if limited is not None:
            return limited
        try:
            body = await self._json_object(request)
            model, prompt = self._model_and_prompt(body, family)
            callback_url = self._callback_url(body)
            if family == "suno" and callback_url is None:
                raise _BadRequest(422, "callBackUrl is required.")
            refusal = strict_refusal(family, model, body) if self.options.strict else None
            if refusal is not None:
                raise _BadRequest(422, refusal)
        except _BadRequest as exc:
            return _answer(exc.code, exc.msg)
        directives = parse_directives(prompt)
        code = directives.create_code
        if code is not None and code != 200:
            msg = _CREATE_MESSAGES.get(code, f"Simulated error (code {code}).")
            if code == 429:
                return self._too_many("1")
            return _answer(code, msg)
        cost = self.options.cost_per_task
        if not self.state.try_spend(cost):
            return _answer(402, _CREATE_MESSAGES[402])
        kind = "audio" if family == "suno" else infer_kind(model)
        seconds = directives.seconds if directives.seconds is not None else DEFAULT_SECONDS[kind]
        hex_id = uuid.uuid4().hex
        task = SimTask(
            task_id=f"veo_{hex_id}" if family == "veo" else hex_id,
            family=family,
            model=model,
            prompt=prompt,
            param=_echo(body, family, model),
            kind=kind,
            created_at=self.state.clock(),
            duration=seconds * self.options.time_scale,
            cost=cost,
            fail_code=directives.fail_code,
            callback_url=callback_url,
            nocallback=directives.nocallback,
            flaky=directives.flaky,
            hang=directives.hang,
            garbage=directives.garbage,
            query_code=directives.query_code,
            unknown_state=directives.state,
            null_queries=directives.null_queries,
            query_body_code=directives.query_body_code,
            callbacks=directives.callbacks,
            key=key,
        )
        self.state.add(task)
        self.callbacks.task_created(task)
        return _answer(200, "success", {"taskId": task.task_id})

    @staticmethod
    def _model_and_prompt(body: dict[str, Any], family: Family) -> tuple[str, str]:
        if family == "jobs":
            model = body.get("model")
            payload = body.get("input")
            if not isinstance(payload, dict):
                raise _BadRequest(422, "input is required and must be an object.")
            prompt = payload.get("prompt")
            prompt_name = "input.prompt"
        else:
            model = body.get("model", DEFAULT_VEO_MODEL if family == "veo" else DEFAULT_SUNO_MODEL)
            prompt = body.get("prompt")
            prompt_name = "prompt"
        if not isinstance(model, str) or not model.strip():
            raise _BadRequest(422, "model is required.")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _BadRequest(422, f"{prompt_name} is required.")
        return model, prompt

    # -- status queries --

    async def record_info(self, request: Request) -> Response:
        """``GET /api/v1/jobs/recordInfo?taskId=``."""
        return await self._query(request, "jobs")

    async def veo_record_info(self, request: Request) -> Response:
        """``GET /api/v1/veo/record-info?taskId=``."""
        return await self._query(request, "veo")

    async def suno_record_info(self, request: Request) -> Response:
        """``GET /api/v1/generate/record-info?taskId=`` (Suno)."""
        return await self._query(request, "suno")

    async def _query(self, request: Request, family: Family) -> Response:
        key = self._caller_key(request)
        if key is None:
            return _answer(401, _CREATE_MESSAGES[401])
        limited = self._rate_limited(self.state.query_limiter, key)
        if limited is not None:
            return limited
        self.state.stats.queries += 1
        self.state.key_stats(key)["queries"] += 1
        task_id = request.query_params.get("taskId", "").strip()
        if not task_id:
            return _answer(400, "taskId parameter is required")
        task = self.state.tasks.get(task_id)
        # A task belongs to the key (the provider account) that created it: another key does not see it.
        if task is None or task.family != family or (task.key and task.key != key):
            return _answer(404, "Task not found")
        task.queries += 1
        if task.queries <= task.null_queries:
            return _answer(422, _NULL_MESSAGES[family])
        if task.queries % 2 == 0:
            faulty = await self._query_fault(task)
            if faulty is not None:
                return faulty
        now = self.state.clock()
        if family == "jobs":
            data = jobs_record(task, now)
        elif family == "veo":
            data = veo_record(task, now)
        else:
            data = suno_record(task, now)
        reported = task.reported_state(now)
        if reported != task.state(now):
            data[{"jobs": "state", "veo": "successFlag", "suno": "status"}[family]] = reported
        return _answer(200, "success", data)

    @staticmethod
    async def _query_fault(task: SimTask) -> Response | None:
        """The fault a task's directives put on this (even-numbered) status query, after any ``hang``; None
        for a normal answer."""
        if task.hang:
            await asyncio.sleep(task.hang)
        if task.garbage:
            return Response(b"<html><body>502 Bad Gateway (simulated garbage)</body></html>", media_type="text/html")
        if task.query_code is not None:
            code = task.query_code
            msg = _CREATE_MESSAGES.get(code, f"Simulated error (code {code}).")
            return _answer(code, msg, status=code, retry_after="1" if code == 429 else None)
        if task.query_body_code is not None:
            code = task.query_body_code
            return _answer(code, _CREATE_MESSAGES.get(code, f"Simulated error (code {code})."))
        if task.flaky:
            return _answer(500, "Internal server error (simulated: flaky task).", status=500)
        return None

    # -- account --

    async def credit(self, request: Request) -> JSONResponse:
        """``GET /api/v1/chat/credit``: the balance; auth required, not rate limited."""
        if self._caller_key(request) is None:
            return _answer(401, _CREATE_MESSAGES[401])
        return _answer(200, "success", number(self.state.balance))

    # -- simulator extras --

    async def stats(self, request: Request) -> JSONResponse:
        """``GET /__sim/stats``."""
        return JSONResponse(self.state.snapshot())

    async def reset(self, request: Request) -> JSONResponse:
        """``POST /__sim/reset``."""
        self.state.reset()
        self.scheduler.clear()
        self.callbacks.clear()
        return JSONResponse({"ok": True})

    async def set_credits(self, request: Request) -> JSONResponse:
        """``POST /__sim/credits`` ``{"credits": N}`` (N a finite number ≥ 0): set the balance."""
        try:
            body = await self._json_object(request)
        except _BadRequest as exc:
            return JSONResponse({"ok": False, "error": exc.msg}, status_code=400)
        credits = body.get("credits")
        if (
            not isinstance(credits, int | float)
            or isinstance(credits, bool)
            or not math.isfinite(credits)
            or credits < 0
        ):
            return JSONResponse({"ok": False, "error": "credits must be a number >= 0"}, status_code=400)
        self.state.balance = float(credits)
        return JSONResponse({"ok": True, "credits": number(self.state.balance)})

    # -- lifecycle --

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Run the scheduler loop and the callback workers (one shared HTTP client) while the app serves."""
        async with CallbackSender.new_client() as client:
            background = [
                asyncio.create_task(self.scheduler.run(), name="sim-scheduler"),
                asyncio.create_task(self.callbacks.serve(client), name="sim-callbacks"),
            ]
            try:
                yield
            finally:
                for job in background:
                    job.cancel()
                await asyncio.gather(*background, return_exceptions=True)


def _echo(body: dict[str, Any], family: Family, model: str) -> str:
    """The request as the record echoes it (``param``/``paramJson``), a JSON string: for some jobs models its
    ``input`` is itself a JSON string; Veo's echo carries no ``model`` (as the provider's documented example)."""
    echoed = dict(body)
    if family == "jobs" and model in STRING_INPUT and isinstance(echoed.get("input"), dict):
        echoed["input"] = json.dumps(echoed["input"], ensure_ascii=False, separators=(",", ":"))
    if family == "veo":
        echoed.pop("model", None)
    return json.dumps(echoed, ensure_ascii=False, separators=(",", ":"))


def create_app(options: SimOptions | None = None) -> Starlette:
    """Build a simulator app; each call has its own tasks, stats, balance and rate windows."""
    sim = _Simulator(options or SimOptions())
    routes = [
        Route("/api/v1/jobs/createTask", sim.create_task, methods=["POST"]),
        Route("/api/v1/jobs/recordInfo", sim.record_info, methods=["GET"]),
        Route("/api/v1/veo/generate", sim.veo_generate, methods=["POST"]),
        Route("/api/v1/veo/record-info", sim.veo_record_info, methods=["GET"]),
        Route("/api/v1/generate", sim.suno_generate, methods=["POST"]),
        Route("/api/v1/generate/record-info", sim.suno_record_info, methods=["GET"]),
        Route("/api/v1/chat/credit", sim.credit, methods=["GET"]),
        Route("/__sim/stats", sim.stats, methods=["GET"]),
        Route("/__sim/reset", sim.reset, methods=["POST"]),
        Route("/__sim/credits", sim.set_credits, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=sim.lifespan)
    app.state.sim = sim
    return app
