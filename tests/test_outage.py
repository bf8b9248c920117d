"""A Postgres outage under real processes: a throwaway cluster of our own, stopped hard and started again.

While Postgres is down the API answers 503 ``unavailable`` within a few seconds (never a 500, never a hang) and
``/readyz`` says ``"postgres": "down"``; the worker keeps retrying. Once Postgres is back, with no process
restarted, ``/readyz`` is 200 again, every task submitted before the outage succeeds and is charged its cost once,
a new job goes through, and ``creditq audit`` finds nothing.

The cluster is made by :class:`soak.servers.PostgresCluster` (the soak's own): the machine's Postgres binaries
(``initdb``/``pg_ctl``), run as the ``postgres`` user through ``runuser`` when we are root, since Postgres refuses
to run as root. Without those binaries the test is skipped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from soak.servers import PostgresCluster, create_database, postgres_tools
from tests.apiserver import free_port
from tests.conftest import Processes

IMAGE = "google/nano-banana"  # cost 4
ADMIN = {"Authorization": "Bearer admin-secret"}  # conftest's base_env CREDITQ_ADMIN_TOKEN
ANSWER_WITHIN = 5.0  # seconds an API request may take while Postgres is down


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A started throwaway cluster with an empty ``creditq`` database; stopped and deleted at the end."""
    if isinstance(why := postgres_tools(), str):
        pytest.skip(f"cannot make a throwaway Postgres: {why}")
    c = PostgresCluster.create(free_port(), prefix_dir="creditq-outage-")
    try:
        c.start()
        asyncio.run(create_database(c.url("postgres"), "creditq"))
        yield c
    finally:
        c.destroy()


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Wait until ``check()`` is true; returns the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def _timed(http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request that must be answered within ANSWER_WITHIN seconds."""
    started = time.monotonic()
    response = await http.request(method, path, timeout=ANSWER_WITHIN + 1, **kwargs)
    took = time.monotonic() - started
    assert took < ANSWER_WITHIN, f"{method} {path} took {took:.1f}s"
    return response


@pytest.mark.slow
async def test_postgres_outage_and_recovery(cluster: PostgresCluster, procs: Processes) -> None:
    # cluster first: it is torn down after the processes, which never see it vanish at the end.
    env = {"DATABASE_URL": cluster.url()}
    migrate = procs.start("migrate", "migrate", env=env)
    assert migrate.popen.wait(60) == 0, migrate.output()
    procs.sim()
    api = procs.api(env=env)
    worker = procs.worker(env={**env, "KIE_TIMEOUT": "3"})

    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        created = await http.post("/v1/admin/accounts", json={"tier": "pro_plus", "credits": 1000}, headers=ADMIN)
        assert created.status_code == 201, created.text
        auth = {"Authorization": f"Bearer {created.json()['apiKey']}"}

        async def submit(prompt: str) -> httpx.Response:
            return await _timed(
                http, "POST", "/v1/jobs", json={"model": IMAGE, "input": {"prompt": prompt}}, headers=auth
            )

        before = []
        for i in range(3):
            r = await submit(f"outage {i} [sim:seconds=4]")
            assert r.status_code == 202, r.text
            before.append(r.json()["taskId"])

        async def statuses(ids: list[str]) -> list[str]:
            return [(await http.get(f"/v1/jobs/{t}", headers=auth)).json()["status"] for t in ids]

        async def all_running() -> bool:
            return set(await statuses(before)) == {"running"}

        # Down while the provider has the tasks: they end there during the outage.
        await _until(all_running, 15, "the tasks reach the provider")
        cluster.stop()
        down_at = time.monotonic()

        # While down: fast 503s, never a 500; the simulator finishes the tasks meanwhile (4 s).
        while time.monotonic() - down_at < 6:
            for r in (
                await submit("during [sim:seconds=1]"),
                await _timed(http, "GET", "/v1/account", headers=auth),
                await _timed(http, "GET", f"/v1/jobs/{before[0]}", headers=auth),
            ):
                assert r.status_code == 503, (r.request.url, r.status_code, r.text)
                assert r.json()["error"]["code"] == "unavailable", r.text
            readyz = await _timed(http, "GET", "/readyz")
            assert readyz.status_code == 503, readyz.text
            assert readyz.json()["checks"]["postgres"] == "down", readyz.text
            await asyncio.sleep(0.5)
        assert "step.unavailable" in worker.output()  # the worker met the outage and is retrying

        cluster.start()
        up_at = time.monotonic()

        async def ready() -> bool:
            return (await _timed(http, "GET", "/readyz")).status_code == 200

        await _until(ready, 15, "/readyz after Postgres came back")

        async def all_ended() -> bool:
            return all(s in ("succeeded", "failed", "canceled") for s in await statuses(before))

        # The worker's retries back off with the outage's length (6 s here), so they resume within seconds.
        await _until(all_ended, 15 - (time.monotonic() - up_at), "the tasks of before the outage end")
        for t in before:
            view = (await http.get(f"/v1/jobs/{t}", headers=auth)).json()
            assert (view["status"], view["charged"]) == ("succeeded", view["cost"]), view

        after = await submit("after [sim:seconds=1]")
        assert after.status_code == 202, after.text
        after_id = after.json()["taskId"]

        async def after_ended() -> bool:
            return (await statuses([after_id])) == ["succeeded"]

        await _until(after_ended, 15, "a job submitted after the outage succeeds")
        account = (await http.get("/v1/account", headers=auth)).json()
        assert (account["balance"], account["held"]) == (1000 - 4 * 4, 0), account

    # Nothing was restarted.
    assert api.popen.poll() is None and worker.popen.poll() is None
    audit = procs.start("audit", "audit", "--json", env=env)
    assert audit.popen.wait(30) == 0, audit.output()
    out = audit.output()
    assert json.loads(out[out.index("{\n") :]) == {"ok": True, "problems": []}
