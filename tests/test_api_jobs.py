"""The job endpoints: models, submit (202, hold, idempotency, validation), read, list, cancel; the KIE callback.

No worker runs on these tests' queue, so every task stays ``queued`` unless a test moves it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from shared import redis_keys
from shared.config import Settings
from shared.ledger import tasks
from tests.apiserver import IMAGE, VIDEO, Api, balance, bearer, error_of, job, serve, task_count
from tests.conftest import MakeAccount

PUBLIC_IP = "93.184.216.34"


async def submit(
    client: httpx.AsyncClient, key: str, body: dict[str, Any] | None = None, **headers: str
) -> httpx.Response:
    return await client.post("/v1/jobs", json=body or job(), headers={**bearer(key), **headers})


class TestModels:
    async def test_lists_the_price_list(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/v1/models")
        assert r.status_code == 200
        items = {m["model"]: m for m in r.json()["items"]}
        contract = {k: items[IMAGE][k] for k in ("model", "kind", "family", "cost")}
        assert contract == {"model": IMAGE, "kind": "image", "family": "jobs", "cost": 4}
        assert items["veo3"]["family"] == "veo"
        assert set(items[IMAGE]) == {"model", "kind", "family", "cost", "inputs", "pricing"}


class TestSubmit:
    async def test_holds_the_cost_and_answers_queued(
        self, api: Api, pool: asyncpg.Pool, redis: aioredis.Redis, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=100)
        r = await submit(api.client, key)
        assert r.status_code == 202, r.text
        view = r.json()
        assert view["status"] == "queued"
        assert (view["model"], view["cost"], view["charged"]) == (IMAGE, 4, 0)
        assert view["taskId"].startswith("task_")
        assert {"createdAt", "updatedAt"} <= set(view)
        assert "finishedAt" not in view
        assert await balance(pool, account.id) == (100, 4)
        # The queue hint is there for a worker.
        assert await redis.exists(f"arq:job:{redis_keys.step_job_id(view['taskId'])}")
        assert await redis.zscore(api.settings.queue_name, redis_keys.step_job_id(view["taskId"])) is not None

    async def test_read_back_and_other_accounts_see_nothing(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, key = await make_account(credits=100)
        _, other = await make_account(credits=100)
        task_id = (await submit(client, key)).json()["taskId"]
        mine = await client.get(f"/v1/jobs/{task_id}", headers=bearer(key))
        assert mine.status_code == 200
        assert mine.json()["taskId"] == task_id
        error_of(await client.get(f"/v1/jobs/{task_id}", headers=bearer(other)), 404, "not_found")
        error_of(await client.get("/v1/jobs/task_nope", headers=bearer(key)), 404, "not_found")

    async def test_idempotent_repeat_answers_the_same_task_and_holds_once(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=100)
        first = await submit(client, key, job("same"), **{"Idempotency-Key": "k1"})
        again = await submit(client, key, job("same"), **{"Idempotency-Key": "k1"})
        assert first.status_code == again.status_code == 202
        assert first.json()["taskId"] == again.json()["taskId"]
        assert await balance(pool, account.id) == (100, 4)
        view = (await client.get("/v1/account", headers=bearer(key))).json()
        assert view["limits"]["dailyJobs"]["used"] == 1  # the repeat took no limit either
        assert view["limits"]["concurrentJobs"]["used"] == 1
        conflict = await submit(client, key, job("other"), **{"Idempotency-Key": "k1"})
        error_of(conflict, 409, "idempotency_conflict")
        # Keys are per account: another account's same key is its own.
        _, other = await make_account(credits=100)
        assert (await submit(client, other, job("same"), **{"Idempotency-Key": "k1"})).json()["taskId"] != first.json()[
            "taskId"
        ]

    async def test_key_order_does_not_change_the_body(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, key = await make_account(credits=100)
        headers = {**bearer(key), "Idempotency-Key": "order", "Content-Type": "application/json"}
        a = await client.post(
            "/v1/jobs", content=f'{{"model": "{IMAGE}", "input": {{"prompt": "p"}}}}', headers=headers
        )
        b = await client.post("/v1/jobs", content=f'{{"input":{{"prompt":"p"}},"model":"{IMAGE}"}}', headers=headers)
        assert a.status_code == b.status_code == 202
        assert a.json()["taskId"] == b.json()["taskId"]

    async def test_concurrent_repeats_make_one_task(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=100, tier="pro")
        answers = await asyncio.gather(
            *(submit(client, key, job("twin"), **{"Idempotency-Key": "twin"}) for _ in range(10))
        )
        assert {r.status_code for r in answers} == {202}
        assert len({r.json()["taskId"] for r in answers}) == 1
        assert await task_count(pool, account.id) == 1
        assert await balance(pool, account.id) == (100, 4)

    async def test_repeat_at_the_limit_still_answers_the_task(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, key = await make_account(credits=100)  # free: 2 at once
        first = await submit(client, key, job("a"), **{"Idempotency-Key": "a"})
        assert (await submit(client, key, job("b"))).status_code == 202
        error_of(await submit(client, key, job("c")), 429, "rate_limited")
        again = await submit(client, key, job("a"), **{"Idempotency-Key": "a"})
        assert again.status_code == 202
        assert again.json()["taskId"] == first.json()["taskId"]
        error_of(await submit(client, key, job("other"), **{"Idempotency-Key": "a"}), 409, "idempotency_conflict")

    async def test_insufficient_credits_holds_nothing(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=3)
        error = error_of(await submit(client, key), 402, "insufficient_credits")
        assert (error["required"], error["available"]) == (4, 3)
        assert await balance(pool, account.id) == (3, 0)
        assert await task_count(pool, account.id) == 0

    @pytest.mark.parametrize(
        ("body", "fields"),
        [
            ({"model": "nope", "input": {"prompt": "p"}}, {"model"}),
            ({"input": {"prompt": "p"}}, {"model"}),
            ({"model": IMAGE}, {"input"}),
            ({"model": IMAGE, "input": "a cat"}, {"input"}),
            ({"model": IMAGE, "input": {}}, {"input.prompt"}),
            ({"model": IMAGE, "input": {"prompt": "  "}}, {"input.prompt"}),
            ({"model": IMAGE, "input": {"prompt": 5}}, {"input.prompt"}),
            ({"model": 5, "input": []}, {"model", "input"}),
            ({"model": IMAGE, "input": {"prompt": "p"}, "callbackUrl": 5}, {"callbackUrl"}),
        ],
    )
    async def test_bad_bodies_are_422_with_details(
        self, client: httpx.AsyncClient, make_account: MakeAccount, body: dict[str, Any], fields: set[str]
    ) -> None:
        _, key = await make_account(credits=100)
        error = error_of(await submit(client, key, body), 422, "validation_error")
        assert {d["field"] for d in error["details"]} == fields
        assert all(d["message"] for d in error["details"])

    async def test_veo_input_carries_the_prompt_too(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=100, tier="pro")
        r = await submit(client, key, job("a whale", model="veo3_fast"))
        assert r.status_code == 202
        assert (r.json()["model"], r.json()["cost"]) == ("veo3_fast", 80)


class TestCallbackUrl:
    @pytest.mark.parametrize(
        "url",
        [
            "ftp://example.com/cb",
            "http://127.0.0.1/cb",
            "http://localhost:8080/cb",
            "http://10.1.2.3/cb",
            "http://192.168.0.10/cb",
            "http://172.16.5.5/cb",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/cb",
            "http://[fe80::1]/cb",
            "http://[::ffff:127.0.0.1]/cb",
            "http://0.0.0.0/cb",
            "http://2130706433/cb",
            "https://user:pw@93.184.216.34/cb",
            "http:///nohost",
            "not a url",
        ],
    )
    async def test_refused(self, client: httpx.AsyncClient, make_account: MakeAccount, url: str) -> None:
        _, key = await make_account(credits=100)
        error = error_of(await submit(client, key, job(callbackUrl=url)), 422, "validation_error")
        assert [d["field"] for d in error["details"]] == ["callbackUrl"]

    async def test_public_address_is_accepted(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        _, key = await make_account(credits=100)
        r = await submit(client, key, job(callbackUrl=f"https://{PUBLIC_IP}/hooks/done?x=1"))
        assert r.status_code == 202, r.text
        stored = await tasks.get(pool, r.json()["taskId"])
        assert stored["callback_url"] == f"https://{PUBLIC_IP}/hooks/done?x=1"

    async def test_private_allowed_when_configured(self, api_settings: Settings, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=100)
        async with serve(dataclasses.replace(api_settings, allow_private_callbacks=True)) as local:
            r = await submit(local.client, key, job(callbackUrl="http://127.0.0.1:9000/cb"))
        assert r.status_code == 202, r.text


class TestList:
    async def test_pages_return_each_task_once_newest_first(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, key = await make_account(credits=1000, tier="pro_plus")
        created = []
        for i in range(45):
            r = await submit(client, key, job(f"n{i}"))
            assert r.status_code == 202, r.text
            created.append(r.json()["taskId"])
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 20}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get("/v1/jobs", params=params, headers=bearer(key))).json()
            pages += 1
            seen += [t["taskId"] for t in page["items"]]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert pages == 3
        assert seen == created[::-1]

    async def test_status_filter_and_default_limit(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=1000, tier="pro_plus")
        ids = [(await submit(client, key, job(f"n{i}"))).json()["taskId"] for i in range(22)]
        await client.post(f"/v1/jobs/{ids[0]}/cancel", headers=bearer(key))
        everything = (await client.get("/v1/jobs", headers=bearer(key))).json()
        assert len(everything["items"]) == 20
        assert everything["nextCursor"] is not None
        canceled = (await client.get("/v1/jobs", params={"status": "canceled"}, headers=bearer(key))).json()
        assert [t["taskId"] for t in canceled["items"]] == [ids[0]]
        assert canceled["nextCursor"] is None
        error_of(await client.get("/v1/jobs", params={"status": "done"}, headers=bearer(key)), 422, "validation_error")
        error_of(await client.get("/v1/jobs", params={"limit": "0"}, headers=bearer(key)), 422, "validation_error")
        error_of(await client.get("/v1/jobs", params={"cursor": "zzz"}, headers=bearer(key)), 422, "validation_error")

    async def test_only_own_tasks(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=100)
        _, other = await make_account(credits=100)
        await submit(client, other)
        assert (await client.get("/v1/jobs", headers=bearer(key))).json() == {"items": [], "nextCursor": None}


class TestCancel:
    async def test_queued_task_is_canceled_and_refunded(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=100)
        task_id = (await submit(client, key)).json()["taskId"]
        assert await balance(pool, account.id) == (100, 4)
        r = await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key))
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["charged"]) == ("canceled", 0)
        assert "finishedAt" in r.json()
        assert await balance(pool, account.id) == (100, 0)
        again = await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key))
        assert (again.status_code, again.json()["status"]) == (200, "canceled")
        assert await balance(pool, account.id) == (100, 0)
        kinds = [e["kind"] for e in (await client.get("/v1/account/transactions", headers=bearer(key))).json()["items"]]
        assert kinds == ["release", "hold", "grant"]
        # The live slot is free again; today's count stays.
        limits = (await client.get("/v1/account", headers=bearer(key))).json()["limits"]
        assert (limits["concurrentJobs"]["used"], limits["dailyJobs"]["used"]) == (0, 1)

    async def test_running_task_is_not_cancelable(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=100)
        task_id = (await submit(client, key)).json()["taskId"]
        assert await tasks.mark_running(pool, task_id, "prov-1", datetime.now(UTC) + timedelta(minutes=5))
        error_of(await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key)), 409, "not_cancelable")
        assert await balance(pool, account.id) == (100, 4)

    async def test_other_accounts_task_is_not_found(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=100)
        _, other = await make_account(credits=100)
        task_id = (await submit(client, key)).json()["taskId"]
        error_of(await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(other)), 404, "not_found")
        assert (await client.get(f"/v1/jobs/{task_id}", headers=bearer(key))).json()["status"] == "queued"


class TestKieCallback:
    async def test_right_token_pokes_the_task(
        self, api: Api, pool: asyncpg.Pool, redis: aioredis.Redis, make_account: MakeAccount
    ) -> None:
        _, key = await make_account(credits=100)
        task_id = (await submit(api.client, key)).json()["taskId"]
        token = (await tasks.get(pool, task_id))["callback_token"]
        r = await api.client.post(
            "/v1/webhooks/kie",
            params={"task": task_id, "token": token},
            json={"code": 200, "data": {"state": "success"}},
        )
        assert (r.status_code, r.json()) == (200, {"ok": True})
        assert await redis.exists(f"arq:job:{redis_keys.poke_job_id(task_id)}")

    async def test_wrong_token_or_task_is_not_found(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        _, key = await make_account(credits=100)
        task_id = (await submit(client, key)).json()["taskId"]
        token = (await tasks.get(pool, task_id))["callback_token"]
        for params in (
            {"task": task_id, "token": token + "x"},
            {"task": task_id},
            {"task": "task_nope", "token": token},
            {},
        ):
            error_of(await client.post("/v1/webhooks/kie", params=params), 404, "not_found")

    async def test_ended_task_is_not_poked(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, redis: aioredis.Redis, make_account: MakeAccount
    ) -> None:
        _, key = await make_account(credits=100)
        task_id = (await submit(client, key)).json()["taskId"]
        await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key))
        token = (await tasks.get(pool, task_id))["callback_token"]
        r = await client.post("/v1/webhooks/kie", params={"task": task_id, "token": token})
        assert r.status_code == 200
        assert not await redis.exists(f"arq:job:{redis_keys.poke_job_id(task_id)}")


async def test_video_uses_its_own_model(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    account, key = await make_account(credits=100)
    r = await submit(client, key, job(model=VIDEO))
    assert (r.status_code, r.json()["cost"]) == (202, 60)
    assert await balance(pool, account.id) == (100, 60)
