"""The audit's repairs (``shared.repairs``): each runs the path the system would have run, and a stuck task ends
exactly as the worker ends it: refunded, its tier slot freed, its client notified."""

from __future__ import annotations

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared import queue, redis_keys, tier_limits
from shared.config import Settings
from shared.ledger import audit, tasks
from shared.ledger import webhooks as outbox
from shared.pricing import load
from shared.repairs import fixers, repairing
from tests.apiserver import IMAGE, serve
from tests.conftest import MakeAccount
from tests.test_worker import _model, account_state, entries, submit


async def test_audit_fixers(settings: Settings, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
    acct, _ = await make_account(credits=100, tier="pro")
    stuck = await submit(pool, None, settings, acct.id, "stuck", enqueue=False)
    won = await submit(pool, None, settings, acct.id, "won", enqueue=False)
    lost = await submit(pool, None, settings, acct.id, "lost", enqueue=False)
    # What bugs or a hand-edited database could leave: a live task long past its deadline, and tasks that ended
    # without their holds being settled.
    await pool.execute("UPDATE tasks SET deadline_at = now() - interval '1 hour' WHERE id = $1", stuck)
    await pool.execute("UPDATE tasks SET status = 'succeeded', charged = cost, finished_at = now() WHERE id = $1", won)
    await pool.execute("UPDATE tasks SET status = 'failed', finished_at = now() WHERE id = $1", lost)
    kinds = {p.kind for p in await audit.check(pool, 2) if p.accountId == acct.id}
    assert kinds >= {"stuck_task", "open_hold_on_terminal_task"}
    report = await audit.audit(pool, 2, fixers(settings))
    assert [p for p in report.problems if p.accountId == acct.id] == []
    assert (await tasks.get(pool, stuck))["error_code"] == "provider_timeout"
    assert await entries(pool, won) == ["hold", "capture"]
    assert await entries(pool, lost) == ["hold", "release"]
    assert await account_state(pool, acct.id) == (96, 0)
    # Running the repairs again changes nothing.
    again = await audit.audit(pool, 2, fixers(settings))
    assert not [f for f in again.fixed if acct.id in f or stuck in f]


async def test_stuck_task_ends_as_the_worker_ends_it(
    settings: Settings, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    received: list[dict[str, object]] = []

    async def callback(request: Request) -> JSONResponse:
        received.append(await request.json())
        return JSONResponse({"ok": True})

    receiver = Starlette(routes=[Route("/done", callback, methods=["POST"])])
    acct, _ = await make_account(credits=100, tier="free")
    tier = load(settings.pricing_path).tier("free")
    model = _model(settings, IMAGE)
    redis = await queue.connect(settings)
    try:
        async with serve(settings, receiver) as rcv:
            # Admitted as the API admits a job: a tier slot, then the task and its hold.
            task_id = tasks.new_task_id()
            await tier_limits.reserve(redis, settings, acct.id, tier, model.kind, task_id, model.deadline_seconds)
            await tasks.submit(pool, acct.id, model, {"prompt": "stuck"}, f"{rcv.url}/done", None, None, task_id)
            await tier_limits.confirm(redis, settings, acct.id, task_id)
            assert (await tier_limits.usage(redis, settings, acct.id, tier))["concurrentJobs"]["used"] == 1
            # No worker ever looks at it, and its deadline passes long ago.
            await pool.execute("UPDATE tasks SET deadline_at = now() - interval '1 hour' WHERE id = $1", task_id)

            async with repairing(settings, redis=redis) as fixes:
                report = await audit.audit(pool, 2, fixes)

        assert f"task {task_id}: failed provider_timeout, hold released" in report.fixed
        assert [p for p in report.problems if p.accountId == acct.id] == []
        row = await tasks.get(pool, task_id)
        # The worker's own deadline ending: the same code and message.
        assert (row["status"], row["error_code"]) == ("failed", "provider_timeout")
        assert row["error_message"] == "the provider had not started the task by its deadline"
        assert await entries(pool, task_id) == ["hold", "release"]
        assert await account_state(pool, acct.id) == (100, 0)
        # The slot is free again (its own deadline in Redis is still ahead: only a release frees it now).
        assert (await tier_limits.usage(redis, settings, acct.id, tier))["concurrentJobs"]["used"] == 0
        # The client's webhook of the ending is in the outbox (written with the ending) and scheduled in Redis.
        (delivery,) = await outbox.for_task(pool, task_id)
        assert (delivery["type"], delivery["status"], delivery["url"]) == ("job.failed", "pending", f"{rcv.url}/done")
        assert await redis.exists(f"arq:job:{redis_keys.delivery_job_id(delivery['id'])}")
    finally:
        await redis.aclose()


async def test_a_stuck_task_that_may_be_at_the_provider_is_handed_to_a_worker_not_refunded(
    settings: Settings, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    # Past its deadline and running at the provider: the provider may have finished (and billed) it since the last
    # poll, so the repair must not refund it blind; a worker's last status query decides.
    acct, _ = await make_account(credits=100, tier="pro")
    running = await submit(pool, None, settings, acct.id, "at the provider", enqueue=False)
    creating = await submit(pool, None, settings, acct.id, "create begun", enqueue=False)
    await pool.execute(
        "UPDATE tasks SET status = 'running', provider_task_id = 'p-1', deadline_at = now() - interval '1 hour' "
        "WHERE id = $1",
        running,
    )
    await pool.execute(
        "UPDATE tasks SET submit_started_at = now() - interval '2 hours', deadline_at = now() - interval '1 hour' "
        "WHERE id = $1",
        creating,
    )
    redis = await queue.connect(settings)
    try:
        async with repairing(settings, redis=redis) as fixes:
            report = await audit.audit(pool, 2, fixes)
        for task_id in (running, creating):
            assert f"task {task_id}: may be at the provider; handed to a worker for a last status query" in report.fixed
            assert await entries(pool, task_id) == ["hold"]  # nothing refunded
            assert await redis.exists(f"arq:job:{redis_keys.step_job_id(task_id)}")
        assert (await tasks.get(pool, running))["status"] == "running"
        assert (await tasks.get(pool, creating))["status"] == "queued"
        # Still a problem until the worker's look ends it: the audit does not call it fixed.
        left = {p.taskId for p in report.problems if p.kind == "stuck_task"}
        assert {running, creating} <= left
        assert await account_state(pool, acct.id) == (100, 8)
    finally:
        await redis.aclose()
