"""``GET /v1/jobs/{taskId}/events``: the status stream (Server-Sent Events) over real HTTP, with real Postgres
(LISTEN/NOTIFY from the trigger on tasks) and the ledger's own transitions moving the task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from api import events as api_events
from shared.ledger import tasks
from tests.apiserver import bearer, job
from tests.conftest import MakeAccount
from tests.sse import Event, events


async def _submit(client: httpx.AsyncClient, key: str) -> str:
    r = await client.post("/v1/jobs", json=job("stream me"), headers=bearer(key))
    assert r.status_code == 202, r.text
    return str(r.json()["taskId"])


async def _next(stream: AsyncIterator[Event], timeout: float = 3.0) -> Event:
    """The next real event (comments skipped)."""
    while True:
        e = await asyncio.wait_for(anext(stream), timeout)
        if e.comment is None:
            return e


async def _ended(stream: AsyncIterator[Event], timeout: float = 3.0) -> None:
    """The stream ends with no further event."""
    with pytest.raises(StopAsyncIteration):
        await _next(stream, timeout)


async def test_current_view_at_once_then_each_change_then_the_end(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    _, key = await make_account(credits=10)
    task_id = await _submit(client, key)
    async with client.stream("GET", f"/v1/jobs/{task_id}/events", headers=bearer(key)) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        stream = events(resp)
        first = await _next(stream)
        assert (first.event, first.id, first.data["status"], first.data["taskId"]) == (
            "status",
            "queued",
            "queued",
            task_id,
        )

        # The worker's transitions, as the worker makes them: each one is an event within well under the re-read
        # interval (the NOTIFY woke the stream).
        assert await tasks.claim_submit(pool, task_id) is not None
        started = time.monotonic()
        assert await tasks.mark_running(pool, task_id, "prov-1", datetime.now(UTC) + timedelta(seconds=60))
        running = await _next(stream)
        assert (running.event, running.id, running.data["status"]) == ("status", "running", "running")
        assert time.monotonic() - started < api_events.RESYNC_SECONDS / 2
        # Bookkeeping that changes neither status nor progress (a poll's schedule) is no event ...
        await tasks.schedule(pool, task_id, datetime.now(UTC) + timedelta(seconds=30), polled=True)
        # ... and a poll that brings the provider's progress is one.
        await tasks.schedule(pool, task_id, datetime.now(UTC) + timedelta(seconds=30), polled=True, progress=42)
        moved = await _next(stream)
        assert (moved.event, moved.id, moved.data["progress"], moved.data["status"]) == (
            "progress",
            "running:42",
            42,
            "running",
        )

        await tasks.finish(pool, task_id, "succeeded", result={"urls": ["https://cdn.example/x.png"]})
        done = await _next(stream)
        assert (done.event, done.id) == ("status", "succeeded:100")
        view = (await client.get(f"/v1/jobs/{task_id}", headers=bearer(key))).json()
        assert done.data == view and view["charged"] == 4
        await _ended(stream)


async def test_cancel_ends_the_stream(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    _, key = await make_account(credits=10)
    task_id = await _submit(client, key)
    async with client.stream("GET", f"/v1/jobs/{task_id}/events", headers=bearer(key)) as resp:
        stream = events(resp)
        assert (await _next(stream)).id == "queued"
        assert (await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key))).status_code == 200
        canceled = await _next(stream)
        assert (canceled.event, canceled.data["status"]) == ("status", "canceled")
        await _ended(stream)


async def test_last_event_id_gets_what_was_missed(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    _, key = await make_account(credits=10)
    task_id = await _submit(client, key)
    url = f"/v1/jobs/{task_id}/events"
    # Up to date with "queued": nothing is repeated; the next change comes.
    async with client.stream("GET", url, headers={**bearer(key), "Last-Event-ID": "queued"}) as resp:
        stream = events(resp)
        with pytest.raises(TimeoutError):
            await _next(stream, timeout=0.5)
    # It ended while the client was away: a reconnect from "queued" gets the end, then the stream ends.
    assert (await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key))).status_code == 200
    async with client.stream("GET", url, headers={**bearer(key), "Last-Event-ID": "queued"}) as resp:
        stream = events(resp)
        missed = await _next(stream)
        assert (missed.event, missed.id, missed.data["status"]) == ("status", "canceled", "canceled")
        await _ended(stream)
    # A client that saw the end reconnects: nothing more, the stream ends at once.
    async with client.stream("GET", url, headers={**bearer(key), "Last-Event-ID": "canceled"}) as resp:
        await _ended(events(resp))


async def test_a_lost_notification_only_delays_the_event(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_events, "RESYNC_SECONDS", 0.5)
    _, key = await make_account(credits=10)
    task_id = await _submit(client, key)
    async with client.stream("GET", f"/v1/jobs/{task_id}/events", headers=bearer(key)) as resp:
        stream = events(resp)
        assert (await _next(stream)).id == "queued"
        # Move the task with triggers off (no NOTIFY at all): the periodic re-read still finds the change.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                "UPDATE tasks SET status = 'running', provider_task_id = 'p', updated_at = now() WHERE id = $1",
                task_id,
            )
        running = await _next(stream, timeout=3)
        assert running.data["status"] == "running"


async def test_keep_alive_comments_on_an_idle_stream(
    client: httpx.AsyncClient, make_account: MakeAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_events, "KEEPALIVE_SECONDS", 0.2)
    _, key = await make_account(credits=10)
    task_id = await _submit(client, key)
    comments: list[str] = []
    async with client.stream("GET", f"/v1/jobs/{task_id}/events", headers=bearer(key)) as resp:
        stream = events(resp)
        while len(comments) < 2:
            e = await asyncio.wait_for(anext(stream), 3)
            if e.comment is not None:
                comments.append(e.comment)
    assert comments == ["keep-alive", "keep-alive"]


async def test_errors_before_the_stream(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    _, key = await make_account(credits=10)
    _, other = await make_account(credits=10)
    task_id = await _submit(client, key)
    r = await client.get(f"/v1/jobs/{task_id}/events", headers=bearer(other))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get("/v1/jobs/task_nope/events", headers=bearer(key))
    assert r.status_code == 404
    r = await client.get(f"/v1/jobs/{task_id}/events")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


async def test_many_streams_share_one_listener_connection(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount, api_settings: object
) -> None:
    """50 open streams of one API process hold no database connection each: the process's connections to its
    database stay within its pool plus the one listener, and every stream hears its task's end."""
    _, key = await make_account(credits=1000, tier="pro_plus")
    ids = [await _submit(client, key) for _ in range(50)]
    db = await pool.fetchval("SELECT current_database()")

    async def follow(task_id: str, opened: asyncio.Event) -> list[str]:
        seen: list[str] = []
        async with client.stream("GET", f"/v1/jobs/{task_id}/events", headers=bearer(key)) as resp:
            async for e in events(resp):
                if e.comment is None:
                    seen.append(str(e.id))
                    opened.set()
        return seen

    opened = [asyncio.Event() for _ in ids]
    followers = [asyncio.create_task(follow(t, o)) for t, o in zip(ids, opened, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 10)
    # This test's own pool (≤ 20) plus the API's pool (≤ CREDITQ_DB_POOL_SIZE), its task feed and its auth cache.
    held = await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", db)
    assert held <= 20 + 10 + 2
    listeners = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%cq_task_events%'", db
    )
    assert listeners == 1
    for t in ids:
        assert (await client.post(f"/v1/jobs/{t}/cancel", headers=bearer(key))).status_code == 200
    results = await asyncio.wait_for(asyncio.gather(*followers), 10)
    assert all(r == ["queued", "canceled"] for r in results)


async def test_the_feed_reconnects_after_its_connection_is_killed(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_events, "RECONNECT_SECONDS", 0.2)
    _, key = await make_account(credits=10)
    task_id = await _submit(client, key)
    db = await pool.fetchval("SELECT current_database()")
    async with client.stream("GET", f"/v1/jobs/{task_id}/events", headers=bearer(key)) as resp:
        stream = events(resp)
        assert (await _next(stream)).id == "queued"
        killed = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%cq_task_events%'",
            db,
        )
        assert killed == 1
        deadline = time.monotonic() + 5
        while not await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%cq_task_events%'", db
        ):
            assert time.monotonic() < deadline, "the feed did not listen again"
            await asyncio.sleep(0.1)
        started = time.monotonic()
        assert (await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key))).status_code == 200
        assert (await _next(stream)).data["status"] == "canceled"
        assert time.monotonic() - started < api_events.RESYNC_SECONDS / 2  # woken by a notification again
