"""The provider client: against the simulator over real HTTP, and against hand-made answers for the shapes the
simulator does not produce (the protocol's "uncertain" variants)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from shared.config import Settings
from shared.errors import ProviderAccountRefused, ProviderOutOfCredits, ProviderPermanent, ProviderTransient
from shared.pricing import Model
from shared.provider import USER_AGENT, CreateOutcomeUnknown, ProviderClient, ProviderStatus, new_http_client
from tests.conftest import Processes

JOBS = Model("google/nano-banana", "image", "jobs", 4, 300, 8)
VEO = Model("veo3_fast", "video", "veo", 80, 1200, 90)


@pytest.fixture(scope="module")
def sim_url(base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One simulator for the module's tests (starting one takes a second or two)."""
    procs = Processes(base_env, tmp_path_factory.mktemp("sim"))
    try:
        yield procs.sim("--time-scale", "0.05", "--create-limit", "1000", "--query-limit", "1000").url
    finally:
        procs.close()


@pytest.fixture
async def sim_client(sim_url: str, settings: Settings) -> AsyncIterator[tuple[ProviderClient, str]]:
    client = ProviderClient(dataclasses.replace(settings, kie_base_url=sim_url, kie_timeout=5))
    yield client, sim_url
    await client.aclose()


async def _until_done(client: ProviderClient, model: Model, ptid: str) -> ProviderStatus:
    for _ in range(100):
        st = await client.status(model, ptid)
        if st.state != "pending":
            return st
        await asyncio.sleep(0.1)
    raise AssertionError("the simulated task never ended")


async def test_jobs_create_and_succeed(sim_client: tuple[ProviderClient, str]) -> None:
    client, _ = sim_client
    ptid = await client.create(JOBS, {"prompt": "a cat [sim:seconds=1]"}, "https://example.com/cb?task=t1")
    st = await _until_done(client, JOBS, ptid)
    assert st.state == "succeeded"
    assert st.urls and all(u.startswith("https://") for u in st.urls)
    assert st.param is not None and st.param["callBackUrl"] == "https://example.com/cb?task=t1"
    assert st.fail_code is None


async def test_veo_maps_prompt_and_defaults(sim_client: tuple[ProviderClient, str]) -> None:
    client, url = sim_client
    # Only Veo's own fields are mapped; a client's "model" or "callBackUrl" in its input steers nothing.
    ptid = await client.create(
        VEO,
        {
            "prompt": "waves [sim:seconds=1]",
            "image_urls": ["https://x/y.png"],
            "resolution": "1080p",
            "model": "veo3",
            "callBackUrl": "https://evil.example/cb",
        },
        None,
    )
    assert ptid.startswith("veo_")
    st = await _until_done(client, VEO, ptid)
    assert st.state == "succeeded" and st.urls
    # Veo's echo carries no model (as the provider's documented example).
    assert st.param == {
        "imageUrls": ["https://x/y.png"],
        "prompt": "waves [sim:seconds=1]",
        "aspect_ratio": "16:9",
        "resolution": "1080p",
    }
    stats = httpx.get(url + "/__sim/stats").json()
    assert stats["tasks"][ptid]["model"] == "veo3_fast"


async def test_task_failure_is_a_status_not_an_error(sim_client: tuple[ProviderClient, str]) -> None:
    client, _ = sim_client
    for model in (JOBS, VEO):
        ptid = await client.create(model, {"prompt": "x [sim:seconds=1] [sim:fail=500]"}, None)
        st = await _until_done(client, model, ptid)
        assert st.state == "failed"
        assert st.fail_code == "500" and st.fail_message


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (422, ProviderPermanent),
        (400, ProviderPermanent),
        (451, ProviderPermanent),
        (505, ProviderPermanent),
        (401, ProviderAccountRefused),
        (433, ProviderAccountRefused),
        (455, ProviderTransient),
        (500, ProviderTransient),
        (429, ProviderTransient),
        (402, ProviderOutOfCredits),
    ],
)
async def test_create_errors(sim_client: tuple[ProviderClient, str], code: int, error: type[Exception]) -> None:
    client, _ = sim_client
    with pytest.raises(error) as info:
        await client.create(JOBS, {"prompt": f"x [sim:create={code}]"}, None)
    assert not isinstance(info.value, CreateOutcomeUnknown)
    assert getattr(info.value, "provider_code", None) == code
    if code == 429:
        assert getattr(info.value, "retry_after", None) == 1.0


async def test_out_of_credits_and_credits(sim_client: tuple[ProviderClient, str]) -> None:
    client, url = sim_client
    assert await client.credits() > 0
    httpx.post(url + "/__sim/credits", json={"credits": 0})
    try:
        assert await client.credits() == 0
        with pytest.raises(ProviderOutOfCredits):
            await client.create(JOBS, {"prompt": "x"}, None)
    finally:
        httpx.post(url + "/__sim/credits", json={"credits": 1000})


async def test_flaky_and_unknown_task(sim_client: tuple[ProviderClient, str]) -> None:
    client, _ = sim_client
    ptid = await client.create(JOBS, {"prompt": "x [sim:flaky] [sim:seconds=1]"}, None)
    await client.status(JOBS, ptid)
    with pytest.raises(ProviderTransient) as info:
        await client.status(JOBS, ptid)
    assert info.value.provider_code == 500
    # "Task not found" proves nothing (the provider may still finish and bill it): look again later.
    with pytest.raises(ProviderTransient) as nf:
        await client.status(JOBS, "0" * 32)
    assert nf.value.provider_code == 404


async def test_rate_limit_is_transient_with_retry_after(procs: Processes, settings: Settings) -> None:
    sim = procs.sim("--query-limit", "2")
    client = ProviderClient(dataclasses.replace(settings, kie_base_url=sim.url, kie_timeout=5))
    try:
        ptid = await client.create(JOBS, {"prompt": "x"}, None)
        errors = []
        for _ in range(4):
            try:
                await client.status(JOBS, ptid)
            except ProviderTransient as e:
                errors.append(e)
        assert errors and all(e.provider_code == 429 and e.retry_after == 1.0 for e in errors)
    finally:
        await client.aclose()


async def test_connection_refused_is_transient(settings: Settings) -> None:
    client = ProviderClient(dataclasses.replace(settings, kie_base_url="http://127.0.0.1:9", kie_timeout=2))
    try:
        with pytest.raises(ProviderTransient) as info:
            await client.create(JOBS, {"prompt": "x"}, None)
        assert not isinstance(info.value, CreateOutcomeUnknown)  # nothing was sent: safe to send again
    finally:
        await client.aclose()


# --- Answers the simulator does not give: hand-made, through httpx's transport hook ---------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def _client(settings: Settings, handler: Handler) -> ProviderClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), headers={"User-Agent": USER_AGENT})
    return ProviderClient(dataclasses.replace(settings, kie_base_url="https://api.kie.test"), http)


def _answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


async def test_request_shape_headers_and_key(settings: Settings) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"code": 200, "msg": "success", "data": {"taskId": "abc"}})

    client = _client(settings, handler)
    assert await client.create(JOBS, {"prompt": "p", "n": 2}, None) == "abc"
    req = seen[0]
    assert req.url.path == "/api/v1/jobs/createTask"
    assert req.headers["authorization"] == f"Bearer {settings.kie_api_key}"
    assert req.headers["user-agent"].startswith("Mozilla/5.0")
    assert json.loads(req.content) == {"model": JOBS.model, "input": {"prompt": "p", "n": 2}}


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"code": 422, "message": "recordInfo is null", "data": None}, 200, ProviderTransient),
        ({"code": 422, "msg": "bad taskId", "data": {"x": 1}}, 200, ProviderTransient),
        ({"code": 422, "msg": "record is null", "data": None}, 200, ProviderTransient),
        ({"code": 401, "msg": "You do not have access permissions"}, 200, ProviderTransient),
        ("<html>bad gateway</html>", 502, ProviderTransient),
        ("error code: 1010", 403, ProviderTransient),
        ("not json at all", 200, ProviderTransient),
        ({"code": 200, "msg": "ok", "data": {"state": "exploding"}}, 200, ProviderTransient),
        ({"code": 200, "msg": "ok", "data": {"state": "success", "resultJson": "{not json"}}, 200, ProviderTransient),
        ({"code": 455, "msg": "maintenance"}, 200, ProviderTransient),
        ({"code": 200, "msg": "ok", "data": None}, 500, ProviderTransient),
        ({"code": 402, "msg": "no credits"}, 200, ProviderTransient),
    ],
)
async def test_status_envelope_rules(settings: Settings, body: Any, status: int, error: type[Exception]) -> None:
    client = _client(settings, _answer(body, status))
    with pytest.raises(error):
        await client.status(JOBS, "t")


async def test_status_tolerates_variants(settings: Settings) -> None:
    # resultJson given as an object, "message" instead of "msg", progress present.
    client = _client(
        settings,
        _answer(
            {
                "code": 200,
                "message": "success",
                "data": {"state": "success", "resultJson": {"resultUrls": ["https://r/1.png"]}, "progress": 100},
            }
        ),
    )
    st = await client.status(JOBS, "t")
    assert st == ProviderStatus("succeeded", ("https://r/1.png",), progress=100.0)
    client = _client(
        settings,
        _answer({"code": 200, "msg": "", "data": {"successFlag": 3, "errorCode": 501, "errorMessage": "boom"}}),
    )
    st = await client.status(VEO, "t")
    assert (st.state, st.fail_code, st.fail_message) == ("failed", "501", "boom")
    client = _client(settings, _answer({"code": 200, "msg": "", "data": {"successFlag": 0}}))
    assert (await client.status(VEO, "t")).state == "pending"


async def test_retry_after_date_and_garbled_create(settings: Settings) -> None:
    client = _client(
        settings, _answer({"code": 429, "msg": "slow down"}, 429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    )
    with pytest.raises(ProviderTransient) as info:
        await client.credits()
    assert info.value.retry_after == 0.0
    # A 2xx that is not the envelope may hide a created task: the create is "outcome unknown".
    client = _client(settings, _answer("<html>ok</html>", 200))
    with pytest.raises(CreateOutcomeUnknown):
        await client.create(JOBS, {"prompt": "p"}, None)
    client = _client(settings, _answer({"code": 200, "msg": "ok", "data": {}}))
    with pytest.raises(CreateOutcomeUnknown):
        await client.create(JOBS, {"prompt": "p"}, None)


async def test_read_timeout_on_create_is_outcome_unknown(settings: Settings) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client = _client(settings, handler)
    with pytest.raises(CreateOutcomeUnknown):
        await client.create(JOBS, {"prompt": "p"}, None)
    with pytest.raises(ProviderTransient) as info:
        await client.status(JOBS, "t")
    assert not isinstance(info.value, CreateOutcomeUnknown)


async def test_each_call_logged_without_the_key(settings: Settings) -> None:
    from structlog.testing import capture_logs

    secret = dataclasses.replace(settings, kie_api_key="sk-very-secret-key", kie_base_url="https://api.kie.test")
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(_answer({"code": 200, "msg": "ok", "data": {"taskId": "abc"}}))
    )
    client = ProviderClient(secret, http)
    with capture_logs() as logs:
        await client.create(JOBS, {"prompt": "p"}, None)
    assert [e["event"] for e in logs] == ["kie.call"]
    assert logs[0]["endpoint"] == "/api/v1/jobs/createTask" and logs[0]["code"] == 200 and "ms" in logs[0]
    assert "sk-very-secret-key" not in repr(logs)


# --- Faults of the connection itself, through the process's real client (aiohttp's pool under httpx) ---------


@contextlib.asynccontextmanager
async def _server(behaviour: str) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that misbehaves as told: ``drop`` reads the request, then closes without a
    word; ``reset`` reads it, then resets the connection; ``half`` answers a status line and headers, then
    closes before the body it announced."""
    got: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.readuntil(b"\r\n\r\n"))
        if behaviour == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif behaviour == "half":
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{"co')
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
    assert got, "the request reached the server"


@pytest.mark.parametrize("behaviour", ["drop", "reset", "half"])
async def test_a_create_lost_after_it_arrived_is_outcome_unknown(settings: Settings, behaviour: str) -> None:
    """The request reached the provider and the connection died before an answer: the create may have made a
    task, so it is CreateOutcomeUnknown (never sent again blindly), whatever the transport calls the error."""
    async with _server(behaviour) as url:
        client = ProviderClient(dataclasses.replace(settings, kie_base_url=url, kie_timeout=3))
        try:
            with pytest.raises(CreateOutcomeUnknown):
                await client.create(JOBS, {"prompt": "p"}, None)
            with pytest.raises(ProviderTransient) as info:  # a status query is merely tried again
                await client.status(JOBS, "t")
            assert not isinstance(info.value, CreateOutcomeUnknown)
        finally:
            await client.aclose()


async def test_the_real_client_runs_on_aiohttp_unless_a_proxy_is_set(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = new_http_client(settings)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    proxied = new_http_client(settings)
    try:
        assert isinstance(direct._transport, AiohttpTransport)
        assert not isinstance(proxied._transport, AiohttpTransport)  # httpx's own, which honours the proxy
    finally:
        await direct.aclose()
        await proxied.aclose()


def test_pooled_connections_expire_before_common_servers_close_them() -> None:
    """A connection is reused only while the server surely keeps it: idle less long than uvicorn's (the
    simulator's, and a common provider edge's) keep-alive timeout, so a create is never written on a connection
    the server closes at that instant (it would be "outcome unknown" and cost the task)."""
    import uvicorn

    from shared.provider import KEEPALIVE_SECONDS

    assert uvicorn.Config(app=None).timeout_keep_alive > KEEPALIVE_SECONDS  # type: ignore[arg-type]
