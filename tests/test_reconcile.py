"""``GET /v1/admin/reconcile`` and ``creditq audit``: one audit, one set of repairs, two doors.

The problems are made for real: a task whose deadline passes with no worker to end it (``stuck_task``) and a
payment event for an account that does not exist yet (``unapplied_event``). Other tests share the database and
may leave problems of their own, so every assertion looks at this test's problems only.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from shared.config import Settings
from shared.ledger import accounts, payments, tasks
from shared.pricing import Model, load
from tests.conftest import CREDITQ, MakeAccount, Processes

ADMIN = {"Authorization": "Bearer admin-secret"}
# A model of the test's own with a deadline that passes at once; the sweep interval of the session is 2 s.
SHORT = Model(model="test/short-deadline", kind="image", family="jobs", cost=3, deadline_seconds=0.2, typical_seconds=1)


def _keys(problems: list[dict[str, Any]]) -> set[tuple[str, str | None, str | None, str | None]]:
    return {(p["kind"], p.get("taskId"), p.get("eventId"), p.get("accountId")) for p in problems}


def _cli(base_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CREDITQ, "audit", *args], env={**os.environ, **base_env}, capture_output=True, text=True, timeout=60
    )


async def _stuck_task(pool: asyncpg.Pool, make_account: MakeAccount) -> tuple[str, str]:
    """A queued task nobody will run, past its deadline plus the sweep interval: (account id, task id)."""
    acct, _ = await make_account(credits=10)
    sub = await tasks.submit(pool, acct.id, SHORT, {"prompt": "never sent"}, None, None, None)
    return acct.id, str(sub.task["id"])


async def _unapplied_event(pool: asyncpg.Pool, settings: Settings, external_id: str) -> str:
    """A purchase for an account that does not exist yet: stored, not applied."""
    event_id = f"evt_recon_{uuid.uuid4().hex[:12]}"
    event: dict[str, Any] = {
        "id": event_id,
        "type": "checkout.session.completed",
        "data": {"object": {"payment_status": "paid", "metadata": {"externalId": external_id, "credits": "7"}}},
    }
    await payments.store_event(pool, event_id, "checkout.session.completed", event)
    outcome = await payments.apply_event(pool, load(settings.pricing_path), event_id)
    assert outcome.status == "pending"
    return event_id


async def _until_stuck(pool: asyncpg.Pool, task_id: str, sweep_seconds: float) -> None:
    task = await tasks.get(pool, task_id)
    wait = (task["deadline_at"].timestamp() + sweep_seconds + 0.3) - time.time()
    if wait > 0:
        await asyncio.sleep(wait)


@pytest.mark.slow
async def test_route_and_cli_report_the_same_problems_and_fix_them(
    procs: Processes, pool: asyncpg.Pool, make_account: MakeAccount, base_env: dict[str, str], settings: Settings
) -> None:
    api = procs.api()
    account_id, task_id = await _stuck_task(pool, make_account)
    external_id = f"ext_recon_{uuid.uuid4().hex[:8]}"
    event_id = await _unapplied_event(pool, settings, external_id)
    await _until_stuck(pool, task_id, float(base_env["CREDITQ_SWEEP_SECONDS"]))
    mine = {("stuck_task", task_id, None, account_id)}

    with httpx.Client(base_url=api.url, timeout=30) as client:
        r = client.get("/v1/admin/reconcile", headers=ADMIN)
        assert r.status_code == 200, r.text
        route = r.json()
        assert set(route) == {"ok", "problems"}
        assert route["ok"] is False
        assert mine <= _keys(route["problems"])
        assert any(p["kind"] == "unapplied_event" and p.get("eventId") == event_id for p in route["problems"])
        for p in route["problems"]:
            assert isinstance(p["detail"], str) and p["detail"]

        cli = _cli(base_env, "--json")
        assert cli.returncode == 1, cli.stderr
        after = client.get("/v1/admin/reconcile", headers=ADMIN).json()
        # One implementation: the same problems (with nobody fixing, problems only appear as tasks of other
        # tests pass their deadlines, hence the bracket rather than an equality).
        assert _keys(route["problems"]) <= _keys(json.loads(cli.stdout)["problems"]) <= _keys(after["problems"])

        # The account arrives: now the payments fixer can apply the event, the worker's fixer ends the task.
        acct, _, _ = await accounts.create_account(pool, "free", 0, external_id)
        fixed = client.get("/v1/admin/reconcile", params={"fix": "true"}, headers=ADMIN)
        assert fixed.status_code == 200, fixed.text
        body = fixed.json()
        assert any(task_id in line for line in body["fixed"]), body["fixed"]
        assert any(f"applied payment event {event_id}" in line for line in body["fixed"]), body["fixed"]
        left = _keys(body["problems"])
        assert not {k for k in left if k[1] == task_id or k[2] == event_id}, left

    task = await tasks.get(pool, task_id)
    assert (task["status"], task["error_code"], task["charged"]) == ("failed", "provider_timeout", 0)
    assert (await accounts.get_account(pool, acct.id)).balance == 7
    assert (await accounts.get_account(pool, account_id)).held == 0


@pytest.mark.slow
async def test_cli_fix_says_what_it_did(
    pool: asyncpg.Pool, make_account: MakeAccount, base_env: dict[str, str]
) -> None:
    _, task_id = await _stuck_task(pool, make_account)
    await _until_stuck(pool, task_id, float(base_env["CREDITQ_SWEEP_SECONDS"]))
    text = _cli(base_env, "--fix")
    assert f"fixed: task {task_id}" in text.stdout, text.stdout + text.stderr
    assert (await tasks.get(pool, task_id))["status"] == "failed"
    again = _cli(base_env, "--json", "--fix")
    report = json.loads(again.stdout)
    assert report["fixed"] == [] or all(task_id not in line for line in report["fixed"])
    assert again.returncode == (0 if report["ok"] else 1)


def test_reconcile_needs_the_admin_token(procs: Processes) -> None:
    api = procs.api()
    disabled = procs.api(env={"CREDITQ_ADMIN_TOKEN": ""})
    with httpx.Client(timeout=10) as client:
        none = client.get(f"{api.url}/v1/admin/reconcile")
        assert none.status_code == 401
        assert none.json()["error"]["code"] == "unauthenticated"
        wrong = client.get(f"{api.url}/v1/admin/reconcile", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        # The query token is for the HTML page only, not for the JSON API.
        assert client.get(f"{api.url}/v1/admin/reconcile", params={"token": "admin-secret"}).status_code == 401
        off = client.get(f"{disabled.url}/v1/admin/reconcile", headers=ADMIN)
        assert off.status_code == 403
        assert off.json()["error"]["code"] == "forbidden"
        bad = client.get(f"{api.url}/v1/admin/reconcile", params={"fix": "maybe"}, headers=ADMIN)
        assert bad.status_code == 422
