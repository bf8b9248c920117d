"""The KIE.ai simulator (``sim``), exercised over real HTTP: uvicorn in-process, httpx as the client.

Every test starts its own simulator (and, for callbacks, a tiny receiver app) on a free port of 127.0.0.1, so
rate windows, balances and stats never leak between tests. Durations are kept short with ``time_scale`` or
``[sim:seconds=S]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sim.app import SimOptions, create_app
from sim.directives import Directives, parse_directives
from sim.scheduler import Scheduler
from sim.tasks import infer_kind

KEY = "test-key"
HEX32 = re.compile(r"[0-9a-f]{32}")
VEO_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
FAST = SimOptions(time_scale=0.05, callback_retry_delay=1.0)

Json = dict[str, Any]


# -- harness --


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the test process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 for the duration of the block; yield its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", access_log=False, timeout_graceful_shutdown=2
    )
    server = _Server(config)
    runner = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 5
    while not server.started:
        if runner.done():
            runner.result()
            raise RuntimeError("uvicorn stopped before starting")
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await runner


@dataclass
class Sim:
    """A running simulator and a client for it (bearer ``KEY`` unless told otherwise)."""

    url: str
    http: httpx.AsyncClient

    async def create(
        self,
        prompt: str,
        model: str = "google/nano-banana",
        callback: str | None = None,
        key: str | None = KEY,
    ) -> httpx.Response:
        body: Json = {"model": model, "input": {"prompt": prompt, "aspect_ratio": "1:1"}}
        if callback is not None:
            body["callBackUrl"] = callback
        return await self.http.post("/api/v1/jobs/createTask", json=body, headers=_auth(key))

    async def create_id(self, prompt: str, **kwargs: Any) -> str:
        response = await self.create(prompt, **kwargs)
        assert response.status_code == 200, response.text
        assert response.json()["code"] == 200, response.text
        task_id: str = response.json()["data"]["taskId"]
        return task_id

    async def veo(
        self, prompt: str, model: str = "veo3_fast", callback: str | None = None, key: str | None = KEY
    ) -> httpx.Response:
        body: Json = {"prompt": prompt, "model": model, "aspectRatio": "16:9"}
        if callback is not None:
            body["callBackUrl"] = callback
        return await self.http.post("/api/v1/veo/generate", json=body, headers=_auth(key))

    async def veo_id(self, prompt: str, **kwargs: Any) -> str:
        response = await self.veo(prompt, **kwargs)
        assert response.json()["code"] == 200, response.text
        task_id: str = response.json()["data"]["taskId"]
        return task_id

    async def record(self, task_id: str, key: str | None = KEY) -> httpx.Response:
        return await self.http.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=_auth(key))

    async def veo_record(self, task_id: str, key: str | None = KEY) -> httpx.Response:
        return await self.http.get("/api/v1/veo/record-info", params={"taskId": task_id}, headers=_auth(key))

    async def data(self, task_id: str) -> Json:
        response = await self.record(task_id)
        assert response.status_code == 200, response.text
        body: Json = response.json()
        assert body["code"] == 200, body
        data: Json = body["data"]
        return data

    async def veo_data(self, task_id: str) -> Json:
        response = await self.veo_record(task_id)
        body: Json = response.json()
        assert body["code"] == 200, body
        data: Json = body["data"]
        return data

    async def credit(self, key: str | None = KEY) -> httpx.Response:
        return await self.http.get("/api/v1/chat/credit", headers=_auth(key))

    async def stats(self) -> Json:
        response = await self.http.get("/__sim/stats")
        assert response.status_code == 200
        stats: Json = response.json()
        return stats


def _auth(key: str | None) -> dict[str, str]:
    if key is None:
        return {}
    return {"Authorization": f"Bearer {key}" if key else "Bearer"}


@dataclass
class Receiver:
    """A callback receiver: ``/ok/<name>`` answers 200, ``/fail/<name>`` answers 500; every POST is kept."""

    url: str
    calls: list[tuple[str, Json, float]] = field(default_factory=list)

    def to(self, path: str) -> str:
        return f"{self.url}/{path}"

    def bodies(self, path: str) -> list[Json]:
        return [body for seen, body, _ in self.calls if seen == f"/{path}"]

    async def wait_for(self, path: str, count: int, timeout: float = 5.0) -> list[Json]:
        deadline = time.monotonic() + timeout
        while len(self.bodies(path)) < count:
            assert time.monotonic() < deadline, f"{len(self.bodies(path))} calls to /{path}, expected {count}"
            await asyncio.sleep(0.01)
        return self.bodies(path)


StartSim = Callable[[SimOptions], Awaitable[Sim]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start simulators with given options; all are stopped at the end of the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(options: SimOptions) -> Sim:
            url = await stack.enter_async_context(serve(create_app(options)))
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=5))
            return Sim(url, http)

        yield start


@pytest.fixture(scope="module")
async def shared_sim() -> AsyncIterator[Sim]:
    """One simulator for the module, durations scaled by 0.05 (an image takes 0.15 s)."""
    async with serve(create_app(FAST)) as url, httpx.AsyncClient(base_url=url, timeout=5) as http:
        yield Sim(url, http)


@pytest.fixture
async def sim(shared_sim: Sim) -> Sim:
    """The module's simulator, reset: no tasks, zero stats, fresh rate windows, full balance."""
    assert (await shared_sim.http.post("/__sim/reset")).json() == {"ok": True}
    return shared_sim


@pytest.fixture(scope="module")
async def shared_receiver() -> AsyncIterator[Receiver]:
    """One callback receiver for the module."""
    calls: list[tuple[str, Json, float]] = []

    async def record(request: Request) -> JSONResponse:
        calls.append((request.url.path, await request.json(), time.monotonic()))
        status = 500 if request.path_params["mode"] == "fail" else 200
        return JSONResponse({"received": True}, status_code=status)

    app = Starlette(routes=[Route("/{mode}/{name}", record, methods=["POST"])])
    async with serve(app) as url:
        yield Receiver(url, calls)


@pytest.fixture
def receiver(shared_receiver: Receiver, sim: Sim) -> Receiver:
    """The module's receiver with no calls recorded (after the simulator was reset)."""
    shared_receiver.calls.clear()
    return shared_receiver


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# -- lifecycle --


class TestJobsLifecycle:
    async def test_task_waits_generates_then_succeeds_with_result_urls(self, sim: Sim) -> None:
        created = await sim.create("a red fox [sim:seconds=16]")  # 0.8 s at time_scale 0.05, 0.08 s waiting
        assert created.status_code == 200
        assert created.json()["code"] == 200
        assert created.json()["msg"] == "success"
        task_id = created.json()["data"]["taskId"]
        assert HEX32.fullmatch(task_id)

        first = await sim.data(task_id)
        assert first["state"] == "waiting"
        # While a task waits, the real record has no resultJson and null codes, times and credits.
        assert "resultJson" not in first
        assert first["completeTime"] is None and first["costTime"] is None
        assert first["failCode"] is None and first["failMsg"] is None
        assert first["creditsConsumed"] is None
        assert "progress" not in first  # nano-banana reports none
        assert first["taskId"] == task_id
        assert first["model"] == "google/nano-banana"
        assert json.loads(first["param"]) == {
            "model": "google/nano-banana",
            "input": {"prompt": "a red fox [sim:seconds=16]", "aspect_ratio": "1:1"},
        }

        await asyncio.sleep(0.25)
        middle = await sim.data(task_id)
        assert middle["state"] == "generating"

        await asyncio.sleep(0.6)
        done = await sim.data(task_id)
        assert done["state"] == "success"
        assert done["creditsConsumed"] == 1
        assert done["failCode"] == ""
        assert done["failMsg"] == ""
        assert json.loads(done["resultJson"]) == {"resultUrls": [f"https://sim.local/results/{task_id}/0.png"]}
        assert done["completeTime"] - done["createTime"] == pytest.approx(800, abs=2)
        assert done["costTime"] == pytest.approx(800, abs=2)
        assert done["updateTime"] == done["completeTime"]

    @pytest.mark.parametrize(
        ("model", "seconds"),
        [("google/nano-banana", 3), ("kling/v2-1-standard", 20), ("suno/v4-5", 10)],
    )
    async def test_default_duration_follows_the_model_kind(
        self, start_sim: StartSim, model: str, seconds: float
    ) -> None:
        sim = await start_sim(SimOptions(time_scale=0.01, query_limit=0))
        task_id = await sim.create_id("plain prompt", model=model)

        async def finished() -> bool:
            state: str = (await sim.data(task_id))["state"]
            return state == "success"

        await until(finished)
        assert (await sim.data(task_id))["costTime"] == pytest.approx(seconds * 10, abs=2)

    def test_kind_is_inferred_from_the_model_slug(self) -> None:
        assert infer_kind("google/nano-banana") == "image"
        assert infer_kind("bytedance/seedream-v4-text-to-image") == "image"
        assert infer_kind("kling/v2-1-standard") == "video"
        assert infer_kind("wan/2-2-a14b-text-to-video") == "video"
        assert infer_kind("bytedance/seedance-v1-pro") == "video"
        assert infer_kind("suno/v4-5") == "audio"
        assert infer_kind("elevenlabs/text-to-speech") == "audio"


class TestVeoLifecycle:
    async def test_generate_then_record_info_reports_success(self, sim: Sim) -> None:
        created = await sim.veo("a drone shot [sim:seconds=6]")  # 0.3 s at time_scale 0.05
        assert created.status_code == 200
        task_id = created.json()["data"]["taskId"]
        assert task_id.startswith("veo_")
        assert HEX32.fullmatch(task_id.removeprefix("veo_"))

        running = await sim.veo_data(task_id)
        assert running["successFlag"] == 0
        assert running["response"] is None
        assert running["completeTime"] is None
        assert VEO_TIME.fullmatch(running["createTime"])
        assert json.loads(running["paramJson"])["prompt"] == "a drone shot [sim:seconds=6]"

        await asyncio.sleep(0.35)
        done = await sim.veo_data(task_id)
        assert done["taskId"] == task_id
        assert done["successFlag"] == 1
        assert done["response"] == {"resultUrls": [f"https://sim.local/results/{task_id}/0.mp4"]}
        assert done["errorCode"] is None
        assert done["errorMessage"] == ""
        assert VEO_TIME.fullmatch(done["completeTime"])

    async def test_families_do_not_share_ids(self, sim: Sim) -> None:
        veo_id = await sim.veo_id("x")
        jobs_id = await sim.create_id("x")
        assert (await sim.record(veo_id)).json()["code"] == 404
        assert (await sim.veo_record(jobs_id)).json()["code"] == 404

    async def test_model_defaults_to_veo3(self, sim: Sim) -> None:
        response = await sim.http.post("/api/v1/veo/generate", json={"prompt": "no model"}, headers=_auth(KEY))
        assert response.json()["code"] == 200
        stats = await sim.stats()
        assert stats["tasks"][response.json()["data"]["taskId"]]["model"] == "veo3"


# -- directives --


class TestDirectives:
    def test_parse_several_directives_in_one_prompt(self) -> None:
        parsed = parse_directives("cat [sim:seconds=0.5] and [sim:fail=422][sim:nocallback] [SIM:FLAKY]")
        assert parsed == Directives(seconds=0.5, fail_code="422", nocallback=True, flaky=True)
        assert parse_directives("[sim:create=455]").create_code == 455
        assert parse_directives("no markers [sim:seconds=abc] [sim:bogus]") == Directives()

    async def test_fail_ends_in_fail_with_the_fail_code(self, sim: Sim) -> None:
        task_id = await sim.create_id("[sim:fail=422] [sim:seconds=2]")
        await asyncio.sleep(0.15)
        data = await sim.data(task_id)
        assert data["state"] == "fail"
        assert data["failCode"] == "422"
        assert data["failMsg"]
        assert data["resultJson"] == ""
        assert data["completeTime"] is not None

    async def test_fail_on_veo_sets_success_flag_2(self, sim: Sim) -> None:
        task_id = await sim.veo_id("[sim:fail=500][sim:seconds=1]")
        await asyncio.sleep(0.1)
        data = await sim.veo_data(task_id)
        assert data["successFlag"] == 2
        assert data["errorCode"] == 500
        assert data["errorMessage"]
        assert data["response"] is None
        assert (await sim.stats())["tasks"][task_id]["state"] == "fail"

    @pytest.mark.parametrize("code", [402, 422, 500, 455])
    async def test_create_answers_the_code_and_creates_nothing(self, sim: Sim, code: int) -> None:
        response = await sim.create(f"[sim:create={code}] hello")
        assert response.status_code == 200
        assert response.json()["code"] == code
        assert response.json()["msg"]
        assert response.json()["data"] is None
        veo = await sim.veo(f"[sim:create={code}]")
        assert veo.json()["code"] == code
        stats = await sim.stats()
        assert stats["creates"] == 0
        assert stats["tasks"] == {}
        assert (await sim.credit()).json()["data"] == 1_000_000

    async def test_create_429_is_a_real_http_429(self, sim: Sim) -> None:
        response = await sim.create("[sim:create=429]")
        assert response.status_code == 429
        assert response.json()["code"] == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert (await sim.stats())["creates"] == 0

    async def test_flaky_fails_every_second_query(self, sim: Sim) -> None:
        task_id = await sim.create_id("[sim:flaky]")
        statuses = []
        for _ in range(6):
            response = await sim.record(task_id)
            statuses.append(response.status_code)
            assert response.json()["code"] == response.status_code
        assert statuses == [200, 500, 200, 500, 200, 500]
        veo_id = await sim.veo_id("[sim:flaky]")
        assert [(await sim.veo_record(veo_id)).status_code for _ in range(2)] == [200, 500]
        assert (await sim.stats())["tasks"][task_id]["queries"] == 6

    def test_parse_fault_extras(self) -> None:
        parsed = parse_directives("x [sim:hang=2.5] [sim:garbage] [sim:query=455] [sim:state=paused]")
        assert parsed == Directives(hang=2.5, garbage=True, query_code=455, state="paused")
        malformed = "[sim:hang=x] [sim:hang=-1] [sim:query=abc] [sim:query=999] [sim:state=] [sim:garbage=1]"
        assert parse_directives(malformed) == Directives()

    async def test_hang_delays_every_second_query(self, sim: Sim) -> None:
        task_id = await sim.create_id("[sim:hang=0.6] [sim:seconds=100]")
        started = time.monotonic()
        assert (await sim.record(task_id)).status_code == 200
        assert time.monotonic() - started < 0.3
        with pytest.raises(httpx.ReadTimeout):  # a client timeout shorter than the hang fires
            await sim.http.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=_auth(KEY), timeout=0.2)
        assert (await sim.data(task_id))["state"] == "waiting"  # the 3rd query answers at once
        started = time.monotonic()
        slow = await sim.record(task_id)  # the 4th waits, then answers normally
        assert time.monotonic() - started >= 0.55
        assert slow.json()["code"] == 200
        assert (await sim.stats())["tasks"][task_id]["queries"] == 4

    async def test_garbage_answers_non_json_every_second_query(self, sim: Sim) -> None:
        task_id = await sim.create_id("[sim:garbage] [sim:seconds=1]")  # 0.05 s
        await asyncio.sleep(0.1)
        answers = [await sim.record(task_id) for _ in range(4)]
        assert [a.status_code for a in answers] == [200] * 4
        for odd in answers[0::2]:
            assert odd.json()["data"]["state"] == "success"
        for even in answers[1::2]:
            with pytest.raises(ValueError, match="Expecting value"):
                json.loads(even.content)

    @pytest.mark.parametrize("code", [455, 429, 503])
    async def test_query_code_answers_the_http_status_every_second_query(self, sim: Sim, code: int) -> None:
        task_id = await sim.create_id(f"[sim:query={code}] [sim:seconds=100]")
        answers = [await sim.record(task_id) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, code, 200, code]
        assert [a.json()["code"] for a in answers] == [200, code, 200, code]
        assert answers[1].json()["msg"]
        assert answers[1].json()["data"] is None
        assert answers[1].headers.get("Retry-After") == ("1" if code == 429 else None)
        veo_id = await sim.veo_id(f"[sim:query={code}]")
        assert [(await sim.veo_record(veo_id)).status_code for _ in range(2)] == [200, code]
        assert (await sim.stats())["rateLimited"] == 0  # only the limits' own 429s are counted

    async def test_state_reports_an_unknown_state_for_the_first_half(self, sim: Sim) -> None:
        task_id = await sim.create_id("[sim:state=paused] [sim:seconds=8]")  # 0.4 s
        veo_id = await sim.veo_id("[sim:state=paused] [sim:seconds=8]")
        assert (await sim.data(task_id))["state"] == "paused"
        assert (await sim.veo_data(veo_id))["successFlag"] == "paused"
        await asyncio.sleep(0.25)
        assert (await sim.data(task_id))["state"] == "generating"
        assert (await sim.veo_data(veo_id))["successFlag"] == 0
        await asyncio.sleep(0.2)
        assert (await sim.data(task_id))["state"] == "success"
        assert (await sim.stats())["tasks"][task_id]["state"] == "success"


# -- validation --


class TestValidation:
    async def test_bad_json_is_code_400(self, sim: Sim) -> None:
        for path in ("/api/v1/jobs/createTask", "/api/v1/veo/generate"):
            response = await sim.http.post(path, content=b"{not json", headers=_auth(KEY))
            assert response.json()["code"] == 400
            response = await sim.http.post(path, json=[1, 2], headers=_auth(KEY))
            assert response.json()["code"] == 400

    @pytest.mark.parametrize(
        "body",
        [
            {"input": {"prompt": "x"}},
            {"model": "", "input": {"prompt": "x"}},
            {"model": "m"},
            {"model": "m", "input": {"aspect_ratio": "1:1"}},
            {"model": "m", "input": {"prompt": ""}},
            {"model": "m", "input": {"prompt": "x"}, "callBackUrl": 5},
        ],
    )
    async def test_missing_model_or_prompt_is_code_422(self, sim: Sim, body: Json) -> None:
        response = await sim.http.post("/api/v1/jobs/createTask", json=body, headers=_auth(KEY))
        assert response.status_code == 200
        assert response.json()["code"] == 422
        assert (await sim.stats())["creates"] == 0

    async def test_veo_without_prompt_is_code_422(self, sim: Sim) -> None:
        response = await sim.http.post("/api/v1/veo/generate", json={"model": "veo3"}, headers=_auth(KEY))
        assert response.json()["code"] == 422

    async def test_unknown_task_is_404_and_missing_task_id_is_400(self, sim: Sim) -> None:
        unknown = await sim.record("0" * 32)
        assert unknown.status_code == 200
        assert unknown.json() == {"code": 404, "msg": "Task not found", "data": None}
        assert (await sim.veo_record("veo_nope")).json()["code"] == 404
        missing = await sim.http.get("/api/v1/jobs/recordInfo", headers=_auth(KEY))
        assert missing.json() == {"code": 400, "msg": "taskId parameter is required", "data": None}
        missing_veo = await sim.http.get("/api/v1/veo/record-info?taskId=", headers=_auth(KEY))
        assert missing_veo.json()["code"] == 400


# -- auth --


class TestAuth:
    async def test_missing_or_empty_key_is_code_401(self, sim: Sim) -> None:
        task_id = await sim.create_id("x")
        for response in (
            await sim.create("x", key=None),
            await sim.create("x", key=""),
            await sim.veo("x", key=None),
            await sim.record(task_id, key=None),
            await sim.veo_record(task_id, key=None),
            await sim.credit(key=None),
        ):
            assert response.status_code == 200
            assert response.json()["code"] == 401
            assert response.json()["data"] is None
        not_bearer = await sim.http.get("/api/v1/chat/credit", headers={"Authorization": "Basic abc"})
        assert not_bearer.json()["code"] == 401
        assert (await sim.stats())["creates"] == 1

    async def test_any_non_empty_key_is_accepted_by_default(self, sim: Sim) -> None:
        assert (await sim.create("x", key="whatever")).json()["code"] == 200

    async def test_configured_key_rejects_other_keys(self, start_sim: StartSim) -> None:
        sim = await start_sim(SimOptions(api_key="right", time_scale=0.05))
        assert (await sim.create("x", key="wrong")).json()["code"] == 401
        assert (await sim.credit(key="wrong")).json()["code"] == 401
        assert (await sim.create("x", key="right")).json()["code"] == 200
        assert (await sim.credit(key="right")).json()["code"] == 200


# -- rate limits --


class TestRateLimits:
    async def test_21st_create_in_10_seconds_is_http_429_and_not_executed(self, sim: Sim) -> None:
        for _ in range(20):
            assert (await sim.create("x")).status_code == 200
        limited = await sim.create("x")
        assert limited.status_code == 429
        assert limited.json()["code"] == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 10
        assert (await sim.veo("x")).status_code == 429  # veo creates share the window
        stats = await sim.stats()
        assert stats["creates"] == 20
        assert stats["rateLimited"] == 2
        assert len(stats["tasks"]) == 20
        assert (await sim.credit()).json()["data"] == 1_000_000 - 20
        assert (await sim.create("x", key="other-key")).status_code == 200  # per key

    async def test_11th_query_in_a_second_is_http_429(self, sim: Sim) -> None:
        task_id = await sim.create_id("x")
        started = time.monotonic()
        for _ in range(10):
            assert (await sim.record(task_id)).status_code == 200
        limited = await sim.veo_record("veo_x")  # both query endpoints share the window
        assert time.monotonic() - started < 1
        assert limited.status_code == 429
        assert limited.json()["code"] == 429
        assert limited.headers["Retry-After"] == "1"
        stats = await sim.stats()
        assert stats["queries"] == 10
        assert stats["rateLimited"] == 1
        assert stats["tasks"][task_id]["queries"] == 10
        await asyncio.sleep(1.0)
        assert (await sim.record(task_id)).status_code == 200

    async def test_credit_endpoint_is_not_limited(self, start_sim: StartSim) -> None:
        sim = await start_sim(SimOptions(query_limit=2, create_limit=2))
        for _ in range(10):
            assert (await sim.credit()).status_code == 200
        assert (await sim.stats())["rateLimited"] == 0

    async def test_limits_follow_the_options(self, start_sim: StartSim) -> None:
        sim = await start_sim(SimOptions(create_limit=3, query_limit=0))
        codes = [(await sim.create("x")).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        task_id = next(iter((await sim.stats())["tasks"]))
        assert all([(await sim.record(task_id)).status_code == 200 for _ in range(15)])  # 0 = no limit


# -- credits --


class TestCredits:
    async def test_running_out_answers_402_and_top_up_restores(self, start_sim: StartSim) -> None:
        sim = await start_sim(SimOptions(credits=2, cost_per_task=1, time_scale=0.05))
        assert (await sim.credit()).json() == {"code": 200, "msg": "success", "data": 2}
        await sim.create_id("one")
        await sim.veo_id("two")
        out = await sim.create("three")
        assert out.status_code == 200
        assert out.json()["code"] == 402
        assert (await sim.veo("three")).json()["code"] == 402
        assert (await sim.credit()).json()["data"] == 0
        assert (await sim.stats())["creates"] == 2

        topped = await sim.http.post("/__sim/credits", json={"credits": 5})
        assert topped.json() == {"ok": True, "credits": 5}
        assert (await sim.credit()).json()["data"] == 5
        await sim.create_id("four")
        assert (await sim.credit()).json()["data"] == 4

    async def test_set_credits_rejects_bad_values(self, sim: Sim) -> None:
        for body in ({"credits": -1}, {"credits": "5"}, {"credits": True}, {}):
            assert (await sim.http.post("/__sim/credits", json=body)).status_code == 400
        assert (await sim.http.post("/__sim/credits", content=b"nope")).status_code == 400

    async def test_fractional_costs(self, start_sim: StartSim) -> None:
        sim = await start_sim(SimOptions(credits=1, cost_per_task=0.5))
        await sim.create_id("a")
        assert (await sim.credit()).json()["data"] == 0.5


# -- callbacks --


class TestCallbacks:
    async def test_jobs_success_callback_arrives_on_time_without_polling(self, sim: Sim, receiver: Receiver) -> None:
        started = time.monotonic()
        task_id = await sim.create_id("[sim:seconds=4]", callback=receiver.to("ok/a"))  # 0.2 s
        [body] = await receiver.wait_for("ok/a", 1)
        assert 0.19 <= receiver.calls[0][2] - started < 1.0
        assert body["code"] == 200
        assert body["msg"] == "Playground task completed successfully."
        data = body["data"]
        assert data["taskId"] == task_id
        assert data["model"] == "google/nano-banana"
        assert data["state"] == "success"
        assert json.loads(data["resultJson"]) == {"resultUrls": [f"https://sim.local/results/{task_id}/0.png"]}
        assert json.loads(data["param"])["callBackUrl"] == receiver.to("ok/a")
        assert data["creditsConsumed"] == 1
        assert data["remainedCredits"] == 1_000_000 - 1
        assert data["costTime"] == pytest.approx(0.2, abs=0.01)  # seconds in a callback
        for name in ("createTime", "completeTime", "updateTime"):
            assert isinstance(data[name], int)
        stats = await sim.stats()
        assert stats["queries"] == 0
        assert stats["callbacksSent"] == 1
        assert stats["callbacksFailed"] == 0
        assert stats["tasks"][task_id]["state"] == "success"

    async def test_jobs_failure_callback(self, sim: Sim, receiver: Receiver) -> None:
        await sim.create_id("[sim:fail=422][sim:seconds=1]", callback=receiver.to("ok/f"))
        [body] = await receiver.wait_for("ok/f", 1)
        assert body["code"] == 501
        assert body["msg"] == body["data"]["failMsg"]
        assert body["data"]["state"] == "fail"
        assert body["data"]["failCode"] == "422"
        assert body["data"]["resultJson"] is None
        assert body["data"]["creditsConsumed"] == 0

    async def test_veo_callbacks(self, sim: Sim, receiver: Receiver) -> None:
        ok_id = await sim.veo_id("[sim:seconds=1]", callback=receiver.to("ok/veo"))
        bad_id = await sim.veo_id("[sim:seconds=1][sim:fail=422]", callback=receiver.to("ok/veo-bad"))
        [ok] = await receiver.wait_for("ok/veo", 1)
        assert ok == {
            "code": 200,
            "msg": "Veo3 video generated successfully.",
            "data": {"taskId": ok_id, "info": {"resultUrls": [f"https://sim.local/results/{ok_id}/0.mp4"]}},
        }
        [bad] = await receiver.wait_for("ok/veo-bad", 1)
        assert bad["code"] == 422
        assert bad["msg"]
        assert bad["data"] == {"taskId": bad_id, "info": None}

    async def test_failed_delivery_is_retried_then_given_up(self, sim: Sim, receiver: Receiver) -> None:
        await sim.create_id("[sim:seconds=1]", callback=receiver.to("fail/r"))
        await receiver.wait_for("fail/r", 3)
        times = [at for path, _, at in receiver.calls]
        assert all(later - earlier >= 0.04 for earlier, later in itertools.pairwise(times))

        async def given_up() -> bool:
            failed: int = (await sim.stats())["callbacksFailed"]
            return failed == 1

        await until(given_up)
        await asyncio.sleep(0.2)
        assert len(receiver.bodies("fail/r")) == 3
        stats = await sim.stats()
        assert stats["callbacksSent"] == 0
        assert stats["callbackAttempts"] == 3

    async def test_unreachable_receiver_counts_as_failed(self, sim: Sim) -> None:
        await sim.create_id("[sim:seconds=0]", callback="http://127.0.0.1:9/nothing-listens")

        async def given_up() -> bool:
            failed: int = (await sim.stats())["callbacksFailed"]
            return failed == 1

        await until(given_up)

    async def test_nocallback_and_no_url_send_nothing(self, sim: Sim, receiver: Receiver) -> None:
        quiet = await sim.create_id("[sim:seconds=1][sim:nocallback]", callback=receiver.to("ok/q"))
        await sim.veo_id("[sim:seconds=1] [sim:nocallback]", callback=receiver.to("ok/q"))
        await sim.create_id("[sim:seconds=1]")
        await asyncio.sleep(0.3)
        assert (await sim.data(quiet))["state"] == "success"
        assert receiver.calls == []
        assert (await sim.stats())["callbacksSent"] == 0

    async def test_many_callbacks_are_all_delivered(self, start_sim: StartSim, receiver: Receiver) -> None:
        sim = await start_sim(SimOptions(time_scale=0.05, create_limit=0))
        callback = receiver.to("ok/many")
        await asyncio.gather(*(sim.create_id("[sim:seconds=2]", callback=callback) for _ in range(50)))
        bodies = await receiver.wait_for("ok/many", 50)
        assert len({body["data"]["taskId"] for body in bodies}) == 50
        assert (await sim.stats())["callbacksSent"] == 50


# -- stats and reset --


class TestStatsAndReset:
    async def test_stats_count_creates_queries_and_tasks(self, sim: Sim) -> None:
        jobs_id = await sim.create_id("first [sim:seconds=100]")
        veo_id = await sim.veo_id("second [sim:seconds=0]")
        await sim.create("[sim:create=500]")
        await sim.record(jobs_id)
        await sim.record(jobs_id)
        await sim.veo_record(veo_id)
        stats = await sim.stats()
        assert stats["creates"] == 2
        assert stats["queries"] == 3
        assert stats["rateLimited"] == 0
        assert stats["callbacksSent"] == 0
        assert stats["callbacksFailed"] == 0
        first = stats["tasks"][jobs_id]
        created, finished = first.pop("createdAt"), first.pop("finishedAt")
        assert first == {
            "queries": 2,
            "state": "waiting",
            "prompt": "first [sim:seconds=100]",
            "model": "google/nano-banana",
            "family": "jobs",
            "key": KEY,
        }
        # Epoch seconds: when it was accepted, and when it reaches its end state (100 s x the time scale).
        assert abs(created - time.time()) < 5
        assert finished - created == pytest.approx(100 * FAST.time_scale)
        assert stats["keys"] == {KEY: {"creates": 2, "queries": 3, "rateLimited": 0}}
        assert stats["tasks"][veo_id]["state"] == "success"
        assert stats["tasks"][veo_id]["queries"] == 1

    async def test_reset_clears_stats_tasks_windows_and_balance(self, sim: Sim, receiver: Receiver) -> None:
        task_id = await sim.create_id("x [sim:seconds=10]", callback=receiver.to("ok/reset"))  # 0.5 s
        for _ in range(19):
            await sim.create("x")
        assert (await sim.create("x")).status_code == 429
        await sim.http.post("/__sim/credits", json={"credits": 0})

        reset = await sim.http.post("/__sim/reset")
        assert reset.status_code == 200
        assert reset.json() == {"ok": True}
        assert await sim.stats() == {
            "creates": 0,
            "queries": 0,
            "rateLimited": 0,
            "callbacksSent": 0,
            "callbacksFailed": 0,
            "callbackAttempts": 0,
            "keys": {},
            "tasks": {},
        }
        assert (await sim.record(task_id)).json()["code"] == 404
        assert (await sim.credit()).json()["data"] == 1_000_000
        assert (await sim.create("x")).status_code == 200
        await asyncio.sleep(0.6)
        assert receiver.calls == []  # the forgotten task's callback is dropped


# -- scheduler --


class TestScheduler:
    async def test_ten_thousand_timers_fire_in_order_on_one_loop(self) -> None:
        scheduler = Scheduler()
        fired: list[int] = []
        start = time.time()
        for index in range(10_000):
            due = start + 0.2 + (index % 100) / 1000
            scheduler.call_at(due, lambda index=index: fired.append(index))  # type: ignore[misc]
        runner = asyncio.create_task(scheduler.run())
        try:
            deadline = time.monotonic() + 3
            while len(fired) < 10_000:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert time.time() - start < 2.0
            slots = [index % 100 for index in fired]
            assert slots == sorted(slots)
            assert len(scheduler) == 0
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def test_an_earlier_timer_wakes_the_loop(self) -> None:
        scheduler = Scheduler()
        fired: list[str] = []
        scheduler.call_at(time.time() + 60, lambda: fired.append("late"))
        runner = asyncio.create_task(scheduler.run())
        try:
            await asyncio.sleep(0.05)
            scheduler.call_at(time.time() + 0.05, lambda: fired.append("soon"))
            await asyncio.sleep(0.2)
            assert fired == ["soon"]
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


# -- the simulator as hard as the provider --


def _hmac_b64(key: str, message: str) -> str:
    import base64
    import hashlib
    import hmac

    return base64.b64encode(hmac.new(key.encode(), message.encode(), hashlib.sha256).digest()).decode()


class TestStrict:
    async def test_unknown_models_and_fields_are_refused_with_422(self, start_sim: StartSim) -> None:
        sim = await start_sim(SimOptions(time_scale=0.05, strict=True))
        refused = [
            ("/api/v1/jobs/createTask", {"model": "some/model", "input": {"prompt": "x"}}),
            ("/api/v1/jobs/createTask", {"model": "google/nano-banana", "input": {"prompt": "x", "n": 2}}),
            ("/api/v1/jobs/createTask", {"model": "google/nano-banana", "input": {"prompt": "x"}, "extra": 1}),
            ("/api/v1/veo/generate", {"prompt": "x", "model": "veo3_fast", "aspectRatio": "16:9"}),
            ("/api/v1/veo/generate", {"prompt": "x", "model": "veo9"}),
            ("/api/v1/generate", {"prompt": "x", "model": "V4_5", "customMode": False, "instrumental": False}),
            ("/api/v1/generate", {"prompt": "x", "model": "V4_5", "callBackUrl": "https://h/c", "lyrics": "la"}),
        ]
        for path, body in refused:
            r = await sim.http.post(path, json=body, headers=_auth(KEY))
            assert r.status_code == 200 and r.json()["code"] == 422, (path, body, r.text)
        accepted = [
            ("/api/v1/jobs/createTask", {"model": "google/nano-banana", "input": {"prompt": "x", "image_size": "1:1"}}),
            ("/api/v1/veo/generate", {"prompt": "x", "model": "veo3", "aspect_ratio": "16:9", "resolution": "4k"}),
            ("/api/v1/generate", {"prompt": "x", "model": "V4_5", "instrumental": True, "callBackUrl": "https://h/c"}),
        ]
        for path, body in accepted:
            r = await sim.http.post(path, json=body, headers=_auth(KEY))
            assert r.json()["code"] == 200, (path, body, r.text)
        assert (await sim.stats())["creates"] == 3

    async def test_suno_without_callback_is_refused_even_when_lenient(self, sim: Sim) -> None:
        r = await sim.http.post("/api/v1/generate", json={"prompt": "x"}, headers=_auth(KEY))
        assert r.json()["code"] == 422 and "callBackUrl" in r.json()["msg"]


class TestSuno:
    async def test_record_info_walks_the_stages_and_callbacks_come_in_stages(
        self, sim: Sim, receiver: Receiver
    ) -> None:
        body = {"prompt": "a song [sim:seconds=12]", "model": "V4_5", "callBackUrl": receiver.to("ok/suno")}
        created = (await sim.http.post("/api/v1/generate", json=body, headers=_auth(KEY))).json()
        task_id = created["data"]["taskId"]

        async def record() -> Json:
            r = await sim.http.get("/api/v1/generate/record-info", params={"taskId": task_id}, headers=_auth(KEY))
            data: Json = r.json()["data"]
            return data

        first = await record()
        assert first["status"] == "PENDING" and first["response"] is None
        assert json.loads(first["param"])["model"] == "V4_5"
        bodies = await receiver.wait_for("ok/suno", 3)
        assert [b["data"]["callbackType"] for b in bodies] == ["text", "first", "complete"]
        assert all(b["data"]["task_id"] == task_id for b in bodies)
        assert [t["audio_url"] != "" for t in bodies[1]["data"]["data"]] == [True, False]
        done = await record()
        assert done["status"] == "SUCCESS" and done["errorCode"] is None
        urls = [t["audioUrl"] for t in done["response"]["sunoData"]]
        assert len(urls) == 2 and all(u.endswith(".mp3") for u in urls)

    async def test_failure(self, sim: Sim, receiver: Receiver) -> None:
        body = {"prompt": "[sim:seconds=1][sim:fail=SENSITIVE_WORD_ERROR]", "callBackUrl": receiver.to("ok/sf")}
        task_id = (await sim.http.post("/api/v1/generate", json=body, headers=_auth(KEY))).json()["data"]["taskId"]
        [cb] = await receiver.wait_for("ok/sf", 1)
        assert cb["code"] == 501 and cb["data"]["callbackType"] == "error"
        r = await sim.http.get("/api/v1/generate/record-info", params={"taskId": task_id}, headers=_auth(KEY))
        assert r.json()["data"]["status"] == "SENSITIVE_WORD_ERROR"


class TestHardDirectives:
    async def test_null_then_record(self, sim: Sim) -> None:
        task_id = await sim.create_id("x [sim:null=2]")
        for _ in range(2):
            assert (await sim.record(task_id)).json() == {"code": 422, "msg": "recordInfo is null", "data": None}
        assert (await sim.record(task_id)).json()["code"] == 200
        veo_id = await sim.veo_id("x [sim:null=1]")
        assert (await sim.veo_record(veo_id)).json()["msg"] == "record is null"

    async def test_querybody_every_second_query(self, sim: Sim) -> None:
        task_id = await sim.create_id("x [sim:querybody=401] [sim:seconds=100]")
        answers = [(await sim.record(task_id)) for _ in range(4)]
        assert [(r.status_code, r.json()["code"]) for r in answers] == [(200, 200), (200, 401)] * 2

    async def test_callbacks_n_times_signed(self, start_sim: StartSim) -> None:
        seen: list[tuple[Json, dict[str, str]]] = []

        async def hook(request: Request) -> JSONResponse:
            seen.append((await request.json(), dict(request.headers)))
            return JSONResponse({"ok": True})

        async with serve(Starlette(routes=[Route("/cb", hook, methods=["POST"])])) as url:
            sim = await start_sim(SimOptions(time_scale=0.05, callback_key="whk"))
            task_id = await sim.create_id("x [sim:callbacks=3] [sim:seconds=1]", callback=f"{url}/cb")
            deadline = time.monotonic() + 5
            while len(seen) < 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        assert all(body["data"]["taskId"] == task_id for body, _ in seen)
        for _, headers in seen:
            stamp = headers["x-webhook-timestamp"]
            assert abs(int(stamp) - time.time()) < 10
            assert headers["x-webhook-signature"] == _hmac_b64("whk", f"{task_id}.{stamp}")

    async def test_body_style_rate_limit(self, start_sim: StartSim) -> None:
        sim = await start_sim(SimOptions(create_limit=1, query_limit=1, rate_limit_style="body"))
        await sim.create_id("x")
        limited = await sim.create("y")
        assert limited.status_code == 200 and limited.json()["code"] == 429
        assert "retry-after" not in limited.headers
        stats = await sim.stats()
        assert stats["rateLimited"] == 1 and stats["keys"][KEY]["rateLimited"] == 1

    async def test_a_task_belongs_to_the_key_that_created_it(self, start_sim: StartSim) -> None:
        sim = await start_sim(SimOptions(api_key="a,b", time_scale=0.05))
        task_id = await sim.create_id("x", key="a")
        assert (await sim.record(task_id, key="a")).json()["code"] == 200
        assert (await sim.record(task_id, key="b")).json()["code"] == 404
        assert (await sim.record(task_id, key="c")).json()["code"] == 401
