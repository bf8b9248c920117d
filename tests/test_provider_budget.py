"""The shared provider budget and the circuit, on the real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
import uuid

import redis.asyncio as aioredis

from shared.config import Settings
from shared.provider import PROVIDER_HINT_SECONDS, noted_provider_task, provider_hint_key, provider_note
from shared.provider_budget import Circuit, KeyRing, ProviderBudget, key_id


def _isolated(settings: Settings, **changes: object) -> Settings:
    return dataclasses.replace(settings, queue_name=f"{settings.queue_name}:rl:{uuid.uuid4().hex[:8]}", **changes)  # type: ignore[arg-type]


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


async def test_try_acquire_grants_then_says_how_long(settings: Settings) -> None:
    s = _isolated(settings, kie_create_limit=3, kie_create_window=2.0)
    r = aioredis.Redis.from_url(s.redis_url)
    try:
        budget = ProviderBudget(r, s)
        assert [await budget.try_acquire("create") for _ in range(3)] == [0.0, 0.0, 0.0]
        wait = await budget.try_acquire("create")
        assert 1.9 < wait <= 2.0 * 1.05 + 0.01
        # A refusal records nothing: the wait does not grow.
        assert await budget.try_acquire("create") <= wait
        keys = [k.decode() async for k in r.scan_iter(f"{s.queue_name}:budget:*")]
        assert keys == [f"{s.queue_name}:budget:{key_id(s)}:create"]
        assert settings.kie_api_key not in keys[0]
    finally:
        await r.aclose()


async def test_concurrent_clients_never_exceed_the_limit(settings: Settings) -> None:
    """Twelve callers on four connections hammer a 5-per-second budget for 3 s. Each "request" reaches the
    provider up to 300 ms after its grant (a slow connection) and reports back when done: no 1 s window of
    arrivals ever holds more than 5, and the budget is used."""
    s = _isolated(settings, kie_query_limit=5)
    clients = [aioredis.Redis.from_url(s.redis_url) for _ in range(4)]
    arrivals: list[float] = []
    stop = time.monotonic() + 3.0

    async def caller(budget: ProviderBudget) -> None:
        while time.monotonic() < stop:
            token = budget.new_token()
            if await budget.acquire("query", max_wait=0.5, token=token):
                await asyncio.sleep(random.uniform(0, 0.3))
                arrivals.append(time.monotonic())
                await asyncio.sleep(random.uniform(0, 0.05))
                await budget.done("query", token)

    try:
        budgets = [ProviderBudget(c, s) for c in clients]
        await asyncio.gather(*(caller(budgets[i % 4]) for i in range(12)))
    finally:
        for c in clients:
            await c.aclose()
    assert _max_in_window(arrivals, 1.0) <= 5
    assert len(arrivals) >= 10  # three windows' worth, less the margin and the latency


async def test_in_flight_grants_hold_their_slot(settings: Settings) -> None:
    s = _isolated(settings, kie_create_limit=2, kie_create_window=0.2, kie_timeout=5)
    r = aioredis.Redis.from_url(s.redis_url)
    try:
        budget = ProviderBudget(r, s)
        a, b = budget.new_token(), budget.new_token()
        assert await budget.try_acquire("create", a) == 0.0
        assert await budget.try_acquire("create", b) == 0.0
        await asyncio.sleep(0.4)  # two windows: still in flight, so still counted
        wait = await budget.try_acquire("create")
        assert 0.2 <= wait <= 0.31  # frees no sooner than a window after the answer
        await budget.done("create", a)
        await budget.done("create", a)  # idempotent
        assert await budget.try_acquire("create") > 0
        await asyncio.sleep(0.35)
        assert await budget.try_acquire("create") == 0.0
    finally:
        await r.aclose()


async def test_acquire_gives_up_after_max_wait(settings: Settings) -> None:
    s = _isolated(settings, kie_create_limit=1, kie_create_window=5.0)
    r = aioredis.Redis.from_url(s.redis_url)
    try:
        budget = ProviderBudget(r, s)
        assert await budget.acquire("create", 0.1)
        t0 = time.monotonic()
        wait = await budget.acquire_or_wait("create", 0.3)
        assert wait > 4.0  # the next slot is ~5 s away: no point sleeping 0.3 s for it
        assert time.monotonic() - t0 < 0.2
        assert not await budget.acquire("create", 0.2)
    finally:
        await r.aclose()


async def test_acquire_waits_for_a_slot(settings: Settings) -> None:
    s = _isolated(settings, kie_create_limit=2, kie_create_window=0.5)
    r = aioredis.Redis.from_url(s.redis_url)
    try:
        budget = ProviderBudget(r, s)
        assert await budget.acquire("create", 0) and await budget.acquire("create", 0)
        t0 = time.monotonic()
        assert await budget.acquire("create", 2.0)
        assert 0.45 < time.monotonic() - t0 < 1.0
    finally:
        await r.aclose()


async def test_circuit(settings: Settings) -> None:
    s = _isolated(settings)
    r = aioredis.Redis.from_url(s.redis_url)
    try:
        c = Circuit(r, s)
        assert not await c.is_open() and await c.info() is None
        assert await c.open("provider_out_of_credits", 0.5)
        assert not await c.open("provider_out_of_credits", 0.5)  # idempotent
        assert await c.is_open()
        info = await c.info()
        assert info is not None and info["reason"] == "provider_out_of_credits"
        await asyncio.sleep(0.7)
        assert not await c.is_open()  # the cool-down closes it by itself
        await c.open("provider_out_of_credits", 30)
        assert await c.close() and not await c.is_open() and not await c.close()
    finally:
        await r.aclose()


async def test_take_create_skips_open_circuits_and_spreads_over_the_keys(settings: Settings) -> None:
    """One script takes the create slot: a key whose circuit is open is never chosen, the others share the
    creates, a full ring says how long to wait, and every circuit open says "never" (inf)."""
    s = _isolated(settings, kie_api_keys=("kie-a", "kie-b", "kie-c"), kie_create_limit=4, kie_create_window=30.0)
    r = aioredis.Redis.from_url(s.redis_url)
    try:
        ring = KeyRing(r, s)
        a, b, c = ring.keys
        await b.circuit.open("provider_out_of_credits", 30)
        taken: list[str] = []
        for _ in range(8):
            key, wait = await ring.take_create(0.0, ProviderBudget.new_token())
            assert key is not None and wait == 0.0
            taken.append(key.id)
        # Both closed keys filled to their limit (4 each), the open one never used.
        assert sorted(taken) == sorted([a.id] * 4 + [c.id] * 4)
        assert (await b.budget.usage())["create"][0] == 0
        key, wait = await ring.take_create(0.0, ProviderBudget.new_token())
        assert key is None and 25.0 < wait <= 32.0
        await a.circuit.open("provider_usage_cap", 30)
        await c.circuit.open("provider_unauthorized", 30)
        assert await ring.take_create(0.0, ProviderBudget.new_token()) == (None, math.inf)
        await b.circuit.close()
        key, wait = await ring.take_create(0.0, ProviderBudget.new_token())
        assert key is b and wait == 0.0
    finally:
        await r.aclose()


async def test_done_with_a_note_writes_both(settings: Settings) -> None:
    """The create's answer time and its provider-id note go in one round trip: both are there after it."""
    s = _isolated(settings, kie_create_limit=1, kie_create_window=30.0, kie_timeout=60.0)
    r = aioredis.Redis.from_url(s.redis_url)
    try:
        budget = ProviderBudget(r, s)
        token = budget.new_token()
        assert await budget.try_acquire("create", token) == 0.0
        in_flight = await r.zscore(budget.log("create"), token)
        await budget.done("create", token, note=provider_note(s, "task_x", "prov-1"))
        answered = await r.zscore(budget.log("create"), token)
        assert in_flight is not None and answered is not None and answered < in_flight - 50_000_000
        assert await noted_provider_task(r, s, "task_x") == "prov-1"
        assert 0 < await r.ttl(provider_hint_key(s, "task_x")) <= PROVIDER_HINT_SECONDS
    finally:
        await r.aclose()
