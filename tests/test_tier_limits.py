"""Tier limits (shared/tier_limits.py): exact under concurrency, through the API and directly against Redis.

Free tier: 10 jobs a day, 2 at once, a video every 180 s. Pro: 20 at once. Limits are checked before credits
are held, and a reservation whose submit fails is undone, so a refused or failed job costs no limit and holds
no credit.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from shared import tier_limits
from shared.config import Settings
from shared.errors import RateLimited, Unavailable
from shared.pricing import Tier
from tests.apiserver import ADMIN, IMAGE, VIDEO, balance, bearer, error_of, free_port, job, task_count
from tests.conftest import MakeAccount

FREE = Tier("free", 0, daily_jobs=10, concurrent_jobs=2, cooldown_seconds={"video": 180})
UNLIMITED = Tier("pro", 0, daily_jobs=0, concurrent_jobs=0, cooldown_seconds={})


def seconds_to_utc_midnight() -> int:
    return 86400 - int(time.time()) % 86400


async def usage(client: httpx.AsyncClient, key: str) -> dict[str, object]:
    limits_view: dict[str, object] = (await client.get("/v1/account", headers=bearer(key))).json()["limits"]
    return limits_view


class TestThroughTheApi:
    async def test_fifty_racing_submits_on_free_admit_exactly_two(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=1000)
        answers = await asyncio.gather(
            *(client.post("/v1/jobs", json=job(f"race {i}"), headers=bearer(key)) for i in range(50))
        )
        codes = Counter(r.status_code for r in answers)
        assert codes == {202: 2, 429: 48}, codes
        for r in answers:
            if r.status_code == 429:
                assert 1 <= error_of(r, 429, "rate_limited")["retryAfter"] <= 5
        assert await balance(pool, account.id) == (1000, 2 * 4)
        assert await task_count(pool, account.id) == 2
        assert (await usage(client, key))["dailyJobs"] == {"limit": 10, "used": 2}

    async def test_contract_race_forty_submits_affording_five(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        # pro: 20 at once, so limits admit up to 20 while credits admit 5. Requests refused while others are
        # still pending wait for those to resolve, so the answer is about credits, not a transient limit.
        account, key = await make_account(credits=5 * 4, tier="pro")
        answers = await asyncio.gather(
            *(client.post("/v1/jobs", json=job(f"race {i}"), headers=bearer(key)) for i in range(40))
        )
        codes = Counter(r.status_code for r in answers)
        assert codes == {202: 5, 402: 35}, codes
        assert await balance(pool, account.id) == (20, 20)
        assert await task_count(pool, account.id) == 5
        assert (await usage(client, key))["concurrentJobs"] == {"limit": 20, "used": 5}

    async def test_daily_limit_of_ten(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=1000)
        for i in range(10):
            r = await client.post("/v1/jobs", json=job(f"day {i}"), headers=bearer(key))
            assert r.status_code == 202, r.text
            # Canceling frees the live slot but not the day's count.
            assert (await client.post(f"/v1/jobs/{r.json()['taskId']}/cancel", headers=bearer(key))).status_code == 200
        r = await client.post("/v1/jobs", json=job("one too many"), headers=bearer(key))
        error = error_of(r, 429, "rate_limited")
        assert abs(error["retryAfter"] - seconds_to_utc_midnight()) <= 2
        assert r.headers["Retry-After"] == str(error["retryAfter"])
        assert await balance(pool, account.id) == (1000, 0)
        assert (await usage(client, key))["dailyJobs"] == {"limit": 10, "used": 10}

    async def test_video_cooldown(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=1000)
        first = await client.post("/v1/jobs", json=job(model=VIDEO), headers=bearer(key))
        assert first.status_code == 202
        await client.post(f"/v1/jobs/{first.json()['taskId']}/cancel", headers=bearer(key))
        r = await client.post("/v1/jobs", json=job(model=VIDEO), headers=bearer(key))
        assert 178 <= error_of(r, 429, "rate_limited")["retryAfter"] <= 180
        # Images have no cooldown.
        assert (await client.post("/v1/jobs", json=job(model=IMAGE), headers=bearer(key))).status_code == 202
        view = await usage(client, key)
        assert view["cooldownSeconds"] == {"video": 180}
        assert 178 <= view["cooldownRemaining"]["video"] <= 180  # type: ignore[index]

    async def test_refused_job_holds_nothing(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=1000)
        for i in range(2):
            assert (await client.post("/v1/jobs", json=job(f"{i}"), headers=bearer(key))).status_code == 202
        error_of(await client.post("/v1/jobs", json=job("third"), headers=bearer(key)), 429, "rate_limited")
        assert await balance(pool, account.id) == (1000, 8)
        assert await task_count(pool, account.id) == 2

    async def test_insufficient_credits_undoes_the_reservation(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, key = await make_account(credits=10)
        error_of(await client.post("/v1/jobs", json=job(model=VIDEO), headers=bearer(key)), 402, "insufficient_credits")
        assert await usage(client, key) == {
            "dailyJobs": {"limit": 10, "used": 0},
            "concurrentJobs": {"limit": 2, "used": 0},
            "cooldownSeconds": {"video": 180},
            "cooldownRemaining": {"video": 0},
        }

    async def test_tier_change_applies_at_once(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        account, key = await make_account(credits=1000)
        for i in range(2):
            await client.post("/v1/jobs", json=job(f"{i}"), headers=bearer(key))
        error_of(await client.post("/v1/jobs", json=job("x"), headers=bearer(key)), 429, "rate_limited")
        await client.patch(f"/v1/admin/accounts/{account.id}", json={"tier": "pro"}, headers=ADMIN)
        assert (await client.post("/v1/jobs", json=job("x"), headers=bearer(key))).status_code == 202


@pytest.fixture
def account_id() -> str:
    return f"acct_test_{uuid.uuid4().hex}"


class TestDirect:
    async def test_reserve_undo_release(self, redis: aioredis.Redis, api_settings: Settings, account_id: str) -> None:
        await tier_limits.reserve(redis, api_settings, account_id, FREE, "video", "t1", 60)
        await tier_limits.confirm(redis, api_settings, account_id, "t1")
        with pytest.raises(RateLimited) as cooldown:
            await tier_limits.reserve(redis, api_settings, account_id, FREE, "video", "t2", 60)
        assert 179 <= cooldown.value.retry_after <= 180
        await tier_limits.reserve(redis, api_settings, account_id, FREE, "image", "t3", 60)
        with pytest.raises(RateLimited) as concurrent:
            await tier_limits.reserve(redis, api_settings, account_id, FREE, "image", "t4", 60)
        assert 1 <= concurrent.value.retry_after <= 5
        view = await tier_limits.usage(redis, api_settings, account_id, FREE)
        assert view["concurrentJobs"] == {"limit": 2, "used": 2}
        assert view["dailyJobs"] == {"limit": 10, "used": 2}

        # undo gives back the slot and the day's count, and ends the cooldown this reservation started; twice
        # is once.
        await tier_limits.undo(redis, api_settings, account_id, "video", "t1")
        await tier_limits.undo(redis, api_settings, account_id, "video", "t1")
        view = await tier_limits.usage(redis, api_settings, account_id, FREE)
        assert view["concurrentJobs"]["used"] == 1
        assert view["dailyJobs"]["used"] == 1
        assert view["cooldownRemaining"] == {"video": 0}

        # release frees the slot only: the job did start.
        await tier_limits.release(redis, api_settings, account_id, "t3")
        view = await tier_limits.usage(redis, api_settings, account_id, FREE)
        assert (view["concurrentJobs"]["used"], view["dailyJobs"]["used"]) == (0, 1)

    async def test_undo_keeps_a_later_reservations_cooldown(
        self, redis: aioredis.Redis, api_settings: Settings, account_id: str
    ) -> None:
        await tier_limits.reserve(redis, api_settings, account_id, FREE, "video", "a", 60)
        await tier_limits.release(redis, api_settings, account_id, "a")
        await tier_limits.undo(redis, api_settings, account_id, "video", "a")  # released: nothing to undo
        view = await tier_limits.usage(redis, api_settings, account_id, FREE)
        assert view["cooldownRemaining"]["video"] >= 179
        assert view["dailyJobs"]["used"] == 1

    async def test_reserving_the_same_task_twice_counts_once(
        self, redis: aioredis.Redis, api_settings: Settings, account_id: str
    ) -> None:
        await tier_limits.reserve(redis, api_settings, account_id, FREE, "image", "same", 60)
        await tier_limits.reserve(redis, api_settings, account_id, FREE, "image", "same", 60)
        view = await tier_limits.usage(redis, api_settings, account_id, FREE)
        assert (view["concurrentJobs"]["used"], view["dailyJobs"]["used"]) == (1, 1)

    async def test_daily_limit_retry_after_is_utc_midnight(
        self, redis: aioredis.Redis, api_settings: Settings, account_id: str
    ) -> None:
        tier = Tier("tiny", 0, daily_jobs=1, concurrent_jobs=0)
        await tier_limits.reserve(redis, api_settings, account_id, tier, "image", "one", 60)
        with pytest.raises(RateLimited) as refused:
            await tier_limits.reserve(redis, api_settings, account_id, tier, "image", "two", 60)
        assert abs(refused.value.retry_after - seconds_to_utc_midnight()) <= 2

    async def test_a_live_job_past_its_deadline_frees_its_slot(
        self, redis: aioredis.Redis, api_settings: Settings, account_id: str
    ) -> None:
        tier = Tier("one", 0, daily_jobs=0, concurrent_jobs=1)
        # A deadline such that deadline + the sweep interval (the slot's lifetime) is 0.2 s.
        lifetime = 0.2 - api_settings.sweep_seconds
        await tier_limits.reserve(redis, api_settings, account_id, tier, "image", "old", lifetime)
        await tier_limits.confirm(redis, api_settings, account_id, "old")
        with pytest.raises(RateLimited):
            await tier_limits.reserve(redis, api_settings, account_id, tier, "image", "new", 60)
        await asyncio.sleep(0.3)
        await tier_limits.reserve(redis, api_settings, account_id, tier, "image", "new", 60)

    async def test_exact_under_concurrency(
        self, redis: aioredis.Redis, api_settings: Settings, account_id: str
    ) -> None:
        tier = Tier("five", 0, daily_jobs=0, concurrent_jobs=5)

        async def one(i: int) -> bool:
            try:
                await tier_limits.reserve(redis, api_settings, account_id, tier, "image", f"t{i}", 60)
            except RateLimited:
                return False
            await tier_limits.confirm(redis, api_settings, account_id, f"t{i}")
            return True

        results = await asyncio.gather(*(one(i) for i in range(100)))
        assert sum(results) == 5

    async def test_no_limits_still_counts_use(
        self, redis: aioredis.Redis, api_settings: Settings, account_id: str
    ) -> None:
        for i in range(30):
            await tier_limits.reserve(redis, api_settings, account_id, UNLIMITED, "video", f"t{i}", 60)
        view = await tier_limits.usage(redis, api_settings, account_id, UNLIMITED)
        assert view == {
            "dailyJobs": {"limit": None, "used": 30},
            "concurrentJobs": {"limit": None, "used": 30},
            "cooldownSeconds": {},
            "cooldownRemaining": {},
        }

    async def test_scripts_survive_a_script_flush(
        self, redis: aioredis.Redis, api_settings: Settings, account_id: str
    ) -> None:
        await redis.script_flush()
        await tier_limits.reserve(redis, api_settings, account_id, FREE, "image", "t", 60)
        assert (await tier_limits.usage(redis, api_settings, account_id, FREE))["dailyJobs"]["used"] == 1

    async def test_redis_down_is_unavailable(self, api_settings: Settings, account_id: str) -> None:
        down = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
        try:
            with pytest.raises(Unavailable):
                await tier_limits.reserve(down, api_settings, account_id, FREE, "image", "t", 60)
            with pytest.raises(Unavailable):
                await tier_limits.usage(down, api_settings, account_id, FREE)
            with pytest.raises(Unavailable):
                await tier_limits.release(down, api_settings, account_id, "t")
        finally:
            await down.aclose()

    async def test_keys_expire_by_themselves(
        self, redis: aioredis.Redis, api_settings: Settings, account_id: str
    ) -> None:
        await tier_limits.reserve(redis, api_settings, account_id, FREE, "video", "t", 60)
        keys = [k async for k in redis.scan_iter(f"{api_settings.queue_name}:limits:*{account_id}*")]
        assert len(keys) == 4
        for k in keys:
            assert await redis.pttl(k) > 0
