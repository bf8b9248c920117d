"""The provider as it really is, end to end against the strict simulator over real HTTP: the families (jobs, Veo,
Suno), the error classes of status queries and creates, recovery on the real shapes of ``param``, several provider
keys with their own budgets and circuits, and ``progress``. Each test asserts the money: a task the provider
succeeded is succeeded and captured whatever it answered on the way; failed and released only on the provider's
own verdict or the deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from arq import Retry
from arq.connections import ArqRedis

from shared import families, queue
from shared.config import Settings
from shared.ledger import tasks
from shared.pricing import Model, load
from shared.provider import ProviderClient, note_provider_task
from shared.provider_budget import key_id
from tests.apiserver import free_port
from tests.conftest import MakeAccount, Processes
from tests.test_worker import account_state, arq_redis, clean_audit, entries, sim_stats, wait_terminal
from worker import step
from worker.runtime import Runtime, close_runtime, open_runtime

__all__ = ["arq_redis"]  # the fixture, imported for this module's tests

IMAGE = "google/nano-banana"  # cost 4
SEEDREAM = "bytedance/seedream-v4-text-to-image"  # cost 6; its echoed param.input is a JSON string
VIDEO = "kling/v2-1-standard"  # cost 60; reports progress
VEO = "veo3_fast"  # cost 80
SUNO = "suno/v4-5"  # cost 12
WORKER_ENV = {"KIE_TIMEOUT": "3"}


def _model(settings: Settings, name: str) -> Model:
    m = load(settings.pricing_path).model(name)
    assert m is not None
    return m


async def _submit(
    pool: asyncpg.Pool,
    arq: ArqRedis | None,
    settings: Settings,
    account_id: str,
    model: str,
    input: dict[str, Any],
) -> str:
    """What the API does: one transaction (task + hold), then enqueue after the commit (when ``arq``)."""
    sub = await tasks.submit(pool, account_id, _model(settings, model), input, None, None, None)
    task_id = str(sub.task["id"])
    if arq is not None:
        await queue.enqueue(arq, settings, task_id)
    return task_id


@pytest.fixture
async def runtime(settings: Settings, arq_redis: ArqRedis, pool: asyncpg.Pool) -> AsyncIterator[Runtime]:
    own = dataclasses.replace(settings, kie_timeout=3, queue_name=f"{settings.queue_name}:fam")
    rt = await open_runtime(own, arq_redis, pool)
    yield rt
    await close_runtime(rt)


def _against(rt: Runtime, sim_url: str, **changes: Any) -> Runtime:
    settings = dataclasses.replace(rt.settings, kie_base_url=sim_url, **changes)
    out = dataclasses.replace(rt, settings=settings)
    out.provider = ProviderClient(settings, rt.http)
    return out


async def _step(rt: Runtime, task_id: str, poked: bool = False) -> str | float:
    """One step as arq would run it: the end status, or the seconds it asked to be deferred by."""
    try:
        return await step.step({"rt": rt, "job_try": 1}, task_id, poked)
    except Retry as e:
        return (e.defer_score or 0) / 1000


async def _drive(rt: Runtime, task_id: str, timeout: float = 20.0) -> str:
    """Step a task until it is terminal, sleeping (a little) as it asks."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        out = await _step(rt, task_id)
        if isinstance(out, str):
            return out
        await asyncio.sleep(min(out, 0.3))
    raise AssertionError(f"{task_id} not terminal after {timeout}s: {(await tasks.get(rt.pool, task_id))['status']}")


# --- 2. status queries: nothing they answer ends a task --------------------------------------------------------


async def test_failed_status_queries_never_refund_a_task_the_provider_finishes(
    procs: Processes, runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """``recordInfo is null`` (and Veo's ``record is null``), 401, 404 and other body codes on status queries
    are looked at again; every task ends succeeded and captured, as the provider finished it."""
    sim = procs.sim("--time-scale", "0.05")
    rt = _against(runtime, sim.url)
    acct, _ = await make_account(credits=1000, tier="pro")
    prompts = {
        IMAGE: [
            "null [sim:null=2] [sim:seconds=2]",
            "unauthorized [sim:querybody=401] [sim:seconds=80]",
            "not found [sim:querybody=404] [sim:seconds=80]",
            "server [sim:querybody=500] [sim:seconds=80]",
        ],
        VEO: ["veo null [sim:null=2] [sim:seconds=2]"],
    }
    ids = [
        await _submit(pool, None, settings, acct.id, model, {"prompt": p}) for model, ps in prompts.items() for p in ps
    ]
    ends = await asyncio.gather(*(_drive(rt, t) for t in ids))
    assert list(ends) == ["succeeded"] * len(ids)
    for t in ids:
        row = await tasks.get(pool, t)
        assert row["charged"] == row["cost"] and row["result"]["urls"]
        assert await entries(pool, t) == ["hold", "capture"]
    seen = sim_stats(sim.url)["tasks"]
    for t in ids:
        # Each was asked at least once more after a failed query (the null ones: twice "null", then the record).
        assert seen[(await tasks.get(pool, t))["provider_task_id"]]["queries"] >= 2
    assert await account_state(pool, acct.id) == (1000 - 4 * 4 - 80, 0)
    await clean_audit(pool, [acct.id])


async def test_a_task_whose_queries_keep_failing_ends_at_its_deadline(
    procs: Processes, runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """Errors back off (growing), the task stays running and held, and only the deadline fails and releases
    it; the provider's own ``fail`` verdict releases at once."""
    sim = procs.sim("--time-scale", "0.01")
    rt = _against(runtime, sim.url)
    acct, _ = await make_account(credits=100, tier="pro")
    stuck = await _submit(pool, None, settings, acct.id, IMAGE, {"prompt": "gone [sim:null=1000] [sim:seconds=1]"})
    failing = await _submit(pool, None, settings, acct.id, IMAGE, {"prompt": "no [sim:fail=500] [sim:seconds=1]"})
    assert isinstance(await _step(rt, stuck), float) and isinstance(await _step(rt, failing), float)
    await asyncio.sleep(0.1)
    delays = []
    for _ in range(4):
        await pool.execute("UPDATE tasks SET next_check_at = now() WHERE id = $1", stuck)
        d = await _step(rt, stuck)
        assert isinstance(d, float)
        delays.append(d)
    assert delays[-1] > delays[0]  # backoff grows with the failures in a row
    row = await tasks.get(pool, stuck)
    assert row["status"] == "running" and row["query_errors"] == 4
    assert await account_state(pool, acct.id) == (100, 8)
    assert await _drive(rt, failing) == "failed"
    assert (await tasks.get(pool, failing))["error_code"] == "provider_failed"
    await pool.execute("UPDATE tasks SET deadline_at = now() - interval '1 second' WHERE id = $1", stuck)
    assert await _step(rt, stuck) == "failed"
    assert (await tasks.get(pool, stuck))["error_code"] == "provider_timeout"
    assert await entries(pool, stuck) == ["hold", "release"]
    assert await account_state(pool, acct.id) == (100, 0)
    await clean_audit(pool, [acct.id])


# --- 2. creates: account-level refusals open the key's circuit ---------------------------------------------------


@pytest.mark.parametrize(("code", "reason"), [(433, "provider_usage_cap"), (401, "provider_unauthorized")])
async def test_account_refusal_opens_the_circuit_and_keeps_tasks_queued(
    procs: Processes,
    runtime: Runtime,
    pool: asyncpg.Pool,
    settings: Settings,
    make_account: MakeAccount,
    code: int,
    reason: str,
) -> None:
    sim = procs.sim("--time-scale", "0.01")
    rt = _against(runtime, sim.url)
    circuit = rt.keys.first.circuit
    await circuit.close()
    acct, _ = await make_account(credits=100, tier="pro")
    capped = await _submit(pool, None, settings, acct.id, IMAGE, {"prompt": f"capped [sim:create={code}]"})
    other = await _submit(pool, None, settings, acct.id, IMAGE, {"prompt": "other [sim:seconds=1]"})
    assert isinstance(await _step(rt, capped), float)
    info = await circuit.info()
    assert info is not None and info["reason"] == reason
    # Nothing is failed for it, and no other task is sent while the key's circuit is open.
    assert isinstance(await _step(rt, other), float)
    rows = await pool.fetch("SELECT status, submit_started_at FROM tasks WHERE id = ANY($1)", [capped, other])
    assert [(r["status"], r["submit_started_at"]) for r in rows] == [("queued", None)] * 2
    assert await account_state(pool, acct.id) == (100, 8)
    assert sim_stats(sim.url)["creates"] == 0
    # The provider takes creates again: the other task runs; the capped one ends only at its deadline.
    await circuit.close()
    assert await _drive(rt, other) == "succeeded"
    await pool.execute("UPDATE tasks SET deadline_at = now() - interval '1 second' WHERE id = $1", capped)
    assert await _step(rt, capped) == "failed"
    assert (await tasks.get(pool, capped))["error_code"] == "provider_timeout"
    assert await entries(pool, capped) == ["hold", "release"]
    assert await account_state(pool, acct.id) == (96, 0)
    await circuit.close()
    await clean_audit(pool, [acct.id])


async def test_create_body_500_is_retried(
    procs: Processes, runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """A create answered body code 500 created nothing: the intent is cleared and the create tried again."""
    sim = procs.sim("--time-scale", "0.01")
    rt = _against(runtime, sim.url)
    acct, _ = await make_account(credits=10, tier="pro")
    t = await _submit(pool, None, settings, acct.id, IMAGE, {"prompt": "busy [sim:create=500]"})
    assert isinstance(await _step(rt, t), float)
    row = await tasks.get(pool, t)
    assert row["status"] == "queued" and row["submit_started_at"] is None and row["submit_attempts"] == 1
    await pool.execute("UPDATE tasks SET next_check_at = now() WHERE id = $1", t)
    assert isinstance(await _step(rt, t), float)
    assert (await tasks.get(pool, t))["submit_attempts"] == 2
    await tasks.cancel(pool, t, acct.id)
    assert await account_state(pool, acct.id) == (10, 0)


# --- 3. recovery on the real shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "input"),
    [
        (SEEDREAM, {"prompt": "seed [sim:seconds=1]", "max_images": 1}),  # param.input is a JSON string
        (VEO, {"prompt": "veo [sim:seconds=1]"}),  # paramJson has no model
        (SUNO, {"prompt": "song [sim:seconds=1]"}),  # Suno's param, a callback URL that names no task
    ],
)
async def test_interrupted_create_is_recovered_on_real_shapes(
    procs: Processes,
    runtime: Runtime,
    pool: asyncpg.Pool,
    settings: Settings,
    make_account: MakeAccount,
    model: str,
    input: dict[str, Any],
) -> None:
    sim = procs.sim("--time-scale", "0.01")
    rt = _against(runtime, sim.url)
    acct, _ = await make_account(credits=100, tier="pro")
    t = await _submit(pool, None, settings, acct.id, model, input)
    row = await tasks.claim_submit(pool, t, rt.keys.first.id)
    assert row is not None
    # The "crashed" worker created it at the provider and noted the id before dying; another task (someone
    # else's prompt) was created too and is rejected as a hint.
    m = rt.model(row)
    ptid = await rt.provider.create(m, input, None)
    stranger = await rt.provider.create(m, {**input, "prompt": "someone else"}, None)
    await note_provider_task(rt.redis, rt.settings, t, stranger)
    await asyncio.sleep(0.1)
    assert isinstance(await _step(rt, t), float)
    assert (await tasks.get(pool, t))["status"] == "queued"
    await note_provider_task(rt.redis, rt.settings, t, ptid)
    assert await _step(rt, t) == "succeeded"
    row = await tasks.get(pool, t)
    assert row["provider_task_id"] == ptid and row["charged"] == row["cost"]
    assert await entries(pool, t) == ["hold", "capture"]
    await clean_audit(pool, [acct.id])


def test_is_ours_reads_param_and_input_as_strings_or_objects() -> None:
    jobs_family, veo_family = families.get("jobs"), families.get("veo")
    m = Model(SEEDREAM, "image", "jobs", 6, 300, 15)
    inner = {"prompt": "p", "max_images": 1}
    from shared.families.base import param_of

    for raw in (
        {"model": SEEDREAM, "input": inner},
        {"model": SEEDREAM, "input": json.dumps(inner)},
        json.dumps({"model": SEEDREAM, "input": json.dumps(inner)}),
        json.dumps({"input": inner}),  # no model echoed: the prompt decides
    ):
        param = param_of(raw)
        assert param is not None and jobs_family.is_ours(param, m, "task_1", {"prompt": "p"}), raw
        assert not jobs_family.is_ours(param, m, "task_1", {"prompt": "q"})
    assert not jobs_family.is_ours({"model": "other", "input": inner}, m, "task_1", {"prompt": "p"})
    v = Model(VEO, "video", "veo", 80, 1200, 90)
    assert veo_family.is_ours({"prompt": "p", "waterMark": ""}, v, "t", {"prompt": "p"})  # the doc's example
    assert veo_family.is_ours({"callBackUrl": "https://x/cb?task=t&token=s", "prompt": "z"}, v, "t", {"prompt": "p"})
    assert not veo_family.is_ours({"callBackUrl": "https://x/cb?task=u", "prompt": "p"}, v, "t", {"prompt": "p"})


# --- 4. Suno end to end ----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_suno_with_staged_callbacks(
    procs: Processes, pool: asyncpg.Pool, arq_redis: ArqRedis, settings: Settings, make_account: MakeAccount
) -> None:
    """Suno through the API's webhook: the ``text`` and ``first`` callbacks poke nothing, the ``complete`` one
    brings the status check that settles; the result is the audio files; a Suno failure is refunded. A jobs
    task called back three times (``[sim:callbacks=3]``) settles once."""
    sim = procs.sim("--time-scale", "0.1")
    port = free_port()
    public = {"CREDITQ_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    procs.api(env=public, port=port)
    procs.worker(env={**WORKER_ENV, **public})
    acct, _ = await make_account(credits=100, tier="pro")
    cb = dataclasses.replace(settings, public_url=public["CREDITQ_PUBLIC_URL"])
    ok = await _submit(
        pool, arq_redis, cb, acct.id, SUNO, {"prompt": "a sea shanty [sim:seconds=30]", "instrumental": True}
    )
    bad = await _submit(
        pool, arq_redis, cb, acct.id, SUNO, {"prompt": "x [sim:seconds=10] [sim:fail=SENSITIVE_WORD_ERROR]"}
    )
    dup = await _submit(pool, arq_redis, cb, acct.id, IMAGE, {"prompt": "dup [sim:callbacks=3] [sim:seconds=5]"})
    rows = {r["id"]: r for r in await wait_terminal(pool, [ok, bad, dup], 30)}
    assert rows[dup]["status"] == "succeeded" and await entries(pool, dup) == ["hold", "capture"]
    assert rows[ok]["status"] == "succeeded" and rows[ok]["charged"] == 12
    urls = rows[ok]["result"]["urls"]
    assert len(urls) == 2 and all(u.endswith(".mp3") for u in urls)
    assert rows[bad]["status"] == "failed" and rows[bad]["error_code"] == "provider_failed"
    assert "SENSITIVE_WORD_ERROR" in rows[bad]["error_message"]
    stats = sim_stats(sim.url)
    assert stats["callbacksSent"] >= 7  # text, first, complete of one; error of the other; 3 of the last
    task = stats["tasks"][rows[ok]["provider_task_id"]]
    assert task["family"] == "suno" and task["queries"] <= 2  # the stages did not each bring a query
    assert await entries(pool, ok) == ["hold", "capture"]
    assert await entries(pool, bad) == ["hold", "release"]
    assert await account_state(pool, acct.id) == (84, 0)
    await clean_audit(pool, [acct.id])


async def test_suno_without_callbacks_polls(
    procs: Processes, runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """No CREDITQ_PUBLIC_URL: Suno still gets the callback URL it requires, one that is never reachable, and
    creditq polls the record through PENDING, TEXT_SUCCESS and FIRST_SUCCESS to SUCCESS."""
    sim = procs.sim("--time-scale", "0.05")
    rt = _against(runtime, sim.url)
    acct, _ = await make_account(credits=100, tier="pro")
    t = await _submit(pool, None, settings, acct.id, SUNO, {"prompt": "lullaby [sim:seconds=8]", "title": "Night"})
    assert await _drive(rt, t) == "succeeded"
    row = await tasks.get(pool, t)
    assert len(row["result"]["urls"]) == 2 and row["charged"] == 12
    stats = sim_stats(sim.url)
    assert stats["callbacksSent"] == 0
    assert await entries(pool, t) == ["hold", "capture"]
    await clean_audit(pool, [acct.id])


# --- 5. several provider keys ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_two_keys_share_the_load_and_queries_follow_the_creating_key(
    procs: Processes, pool: asyncpg.Pool, arq_redis: ArqRedis, settings: Settings, make_account: MakeAccount
) -> None:
    """Two keys, each limited by the simulator to 5 creates per 10 s: 20 tasks settle with no 429, both keys
    create, and each task is followed with the key that created it (another key would get "not found")."""
    sim = procs.sim("--time-scale", "0.2", "--create-limit", "5", "--api-key", "key-a,key-b")
    procs.worker(env={**WORKER_ENV, "KIE_API_KEYS": "key-a,key-b", "KIE_CREATE_LIMIT": "5"})
    acct, _ = await make_account(credits=1000, tier="pro_plus")
    ids = [
        await _submit(pool, arq_redis, settings, acct.id, IMAGE, {"prompt": f"n{i} [sim:seconds=2]"}) for i in range(20)
    ]
    rows = await wait_terminal(pool, ids, 45)
    assert [r["status"] for r in rows] == ["succeeded"] * 20
    stats = sim_stats(sim.url)
    assert stats["rateLimited"] == 0
    # Counted over this test's own provider tasks (a worker of the module may have left others behind).
    ours = [stats["tasks"][r["provider_task_id"]] for r in rows]
    assert len(ours) == 20 and {t["prompt"] for t in ours} == {f"n{i} [sim:seconds=2]" for i in range(20)}
    per_key = {k: sum(t["key"] == k for t in ours) for k in ("key-a", "key-b")}
    assert per_key["key-a"] > 0 and per_key["key-b"] > 0
    ids_of = {key_id(settings, k): k for k in ("key-a", "key-b")}
    for r, t in zip(rows, ours, strict=True):
        assert t["key"] == ids_of[r["provider_key"]]
    assert await account_state(pool, acct.id) == (1000 - 20 * 4, 0)
    await clean_audit(pool, [acct.id])


async def test_one_key_refused_does_not_stop_the_others(
    procs: Processes, runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """A key the provider refuses (401) opens its own circuit; tasks go to the other key and succeed."""
    sim = procs.sim("--time-scale", "0.01", "--api-key", "good")
    rt = await open_runtime(
        dataclasses.replace(runtime.settings, kie_api_keys=("bad", "good"), kie_base_url=sim.url),
        runtime.redis,
        pool,
    )
    try:
        for k in rt.keys.keys:
            await k.circuit.close()
        acct, _ = await make_account(credits=100, tier="pro")
        bad, good = rt.keys.keys
        # Creates start from a random key: one task at a time until one of them has met the bad key (each has
        # even odds; 20 tries all missing it would be one chance in a million).
        ids: list[str] = []
        while not await bad.circuit.is_open():
            assert len(ids) < 20, "no create ever went to the bad key"
            ids.append(await _submit(pool, None, settings, acct.id, IMAGE, {"prompt": f"t{len(ids)} [sim:seconds=1]"}))
            await _step(rt, ids[-1])
        ends = await asyncio.gather(*(_drive(rt, t) for t in ids))
        assert list(ends) == ["succeeded"] * len(ids)
        info = await bad.circuit.info()
        assert info is not None and info["reason"] == "provider_unauthorized"
        assert not await good.circuit.is_open()
        rows = await pool.fetch("SELECT provider_key, charged FROM tasks WHERE id = ANY($1)", ids)
        assert {r["provider_key"] for r in rows} == {good.id} and all(r["charged"] == 4 for r in rows)
        assert await account_state(pool, acct.id) == (100 - 4 * len(ids), 0)
        for k in rt.keys.keys:
            await k.circuit.close()
        await clean_audit(pool, [acct.id])
    finally:
        await close_runtime(rt)


def test_key_list_settings() -> None:
    base = {"KIE_API_KEY": "solo"}
    assert Settings.from_env(base, dotenv=False).provider_keys == ("solo",)
    many = Settings.from_env({**base, "KIE_API_KEYS": " a, b ,c"}, dotenv=False)
    assert many.provider_keys == ("a", "b", "c")
    from shared.errors import ConfigError

    for bad in ("a,,b", "a,a"):
        with pytest.raises(ConfigError, match="KIE_API_KEYS"):
            Settings.from_env({"KIE_API_KEYS": bad}, dotenv=False)


# --- issue 17, point 8: progress -------------------------------------------------------------------------------


async def test_progress_in_the_task_view(
    procs: Processes, runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """A model that reports progress (kling) shows it in the task view while it runs, 100 once succeeded; a
    model that does not (nano-banana) shows none."""
    sim = procs.sim("--time-scale", "0.05")
    rt = _against(runtime, sim.url)
    acct, _ = await make_account(credits=100, tier="pro")
    video = await _submit(pool, None, settings, acct.id, VIDEO, {"prompt": "a river [sim:seconds=20]", "duration": "5"})
    image = await _submit(pool, None, settings, acct.id, IMAGE, {"prompt": "a cat [sim:seconds=20]"})
    for t in (video, image):
        assert isinstance(await _step(rt, t), float)
    await asyncio.sleep(0.5)  # half of the 1 s generation
    for t in (video, image):
        await pool.execute("UPDATE tasks SET next_check_at = now() WHERE id = $1", t)
        assert isinstance(await _step(rt, t), float)
    view = tasks.task_view(await tasks.get(pool, video))
    assert view["status"] == "running" and 0 < view["progress"] < 100
    assert "progress" not in tasks.task_view(await tasks.get(pool, image))
    assert await _drive(rt, video) == "succeeded"
    assert tasks.task_view(await tasks.get(pool, video))["progress"] == 100
    await _drive(rt, image)
    await clean_audit(pool, [acct.id])


# --- 6. the body-style rate limit ------------------------------------------------------------------------------


async def test_body_style_rate_limits_are_retried(
    procs: Processes, runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """HTTP 200 with body code 429 and no Retry-After (creates and queries alike) is a rate limit: retried,
    never a failure."""
    sim = procs.sim("--time-scale", "0.01", "--rate-limit-style", "body", "--create-limit", "2", "--query-limit", "1")
    # creditq believes it may send far more than the simulator takes: the provider's 429s decide.
    rt = _against(runtime, sim.url, kie_create_limit=100, kie_query_limit=100)
    rt = dataclasses.replace(rt, keys=type(runtime.keys)(rt.redis, rt.settings))
    rt.budget, rt.circuit = rt.keys.first.budget, rt.keys.first.circuit
    acct, _ = await make_account(credits=100, tier="pro")
    ids = [await _submit(pool, None, settings, acct.id, IMAGE, {"prompt": f"b{i} [sim:seconds=1]"}) for i in range(4)]
    ends = await asyncio.gather(*(_drive(rt, t, timeout=40) for t in ids))
    assert list(ends) == ["succeeded"] * 4
    assert sim_stats(sim.url)["rateLimited"] > 0
    assert await account_state(pool, acct.id) == (84, 0)
    await clean_audit(pool, [acct.id])


# --- 1. a family is an adapter ---------------------------------------------------------------------------------


def test_families_are_found_and_the_price_list_names_only_those(settings: Settings, tmp_path: Any) -> None:
    """The registry finds every adapter module by itself; a price list naming a family without one is refused
    at load, naming the model and the families there are."""
    assert families.names() == ("jobs", "suno", "veo")
    assert all(families.get(n).name == n for n in families.names())
    from shared.errors import ConfigError

    bad = tmp_path / "pricing.toml"
    bad.write_text(settings.pricing_path.read_text().replace('family = "suno"', 'family = "runway"', 1))
    with pytest.raises(ConfigError, match=r"suno/v4-5.*family must be one of jobs, suno, veo"):
        load(bad)
    suno = load(settings.pricing_path).model(SUNO)
    assert suno is not None and (suno.family, suno.provider_model) == ("suno", "V4_5")
    # The adapters build the request from the model's own fields only: nothing steers it from the input.
    for name in (IMAGE, VEO, SUNO):
        m = load(settings.pricing_path).model(name)
        assert m is not None
        req = families.get(m.family).create_request(
            m, {"prompt": "p", "model": "evil", "callBackUrl": "https://evil/cb"}, None
        )
        assert req.body["model"] == m.provider_model and "evil" not in json.dumps(req.body)


async def test_open_circuits_name_the_key(settings: Settings, redis: Any) -> None:
    """With several keys, /metrics and the admin page say which key's circuit is open, and how many are."""
    from api.admin_page import PageData, _provider
    from shared.metrics import OpsState
    from shared.provider_budget import Circuit, open_circuit_info

    two = dataclasses.replace(settings, kie_api_keys=("k-one", "k-two"), queue_name=f"{settings.queue_name}:circ")
    second = Circuit(redis, two, "k-two")
    assert await open_circuit_info(redis, two) is None
    await second.open("provider_usage_cap", 30)
    try:
        info = await open_circuit_info(redis, two)
        assert info is not None
        assert (info["reason"], info["providerKey"], info["openKeys"], info["keys"]) == (
            "provider_usage_cap",
            key_id(two, "k-two"),
            1,
            2,
        )
        html = _provider(PageData(state=OpsState(circuit_known=True, circuit=info)))
        assert f"provider_usage_cap (key {key_id(two, 'k-two')}, 1 of 2 keys)" in html
    finally:
        await second.close()
