"""What a worker process holds for its steps: the Postgres pool, the arq Redis, the HTTP clients (the provider's, and
the client webhooks'), the provider client, the provider budget and circuit, and the price list. Built in arq's ``on_startup`` and kept in ``ctx``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from arq.connections import ArqRedis

from shared import callback_urls, db, pricing, webhooks
from shared.config import Settings
from shared.provider import ProviderClient, new_http_client
from shared.provider_budget import Circuit, KeyRing, ProviderBudget


@dataclass(eq=False)
class Runtime:
    """One worker process's connections and clients (``ctx["rt"]``). Not thread-safe; one event loop."""

    settings: Settings
    pool: asyncpg.Pool
    redis: ArqRedis
    http: httpx.AsyncClient
    provider: ProviderClient
    budget: ProviderBudget  # the first provider key's (calls that belong to no task)
    circuit: Circuit  # the first provider key's
    prices: pricing.Pricing
    keys: KeyRing
    owns_pool: bool = True
    # When this process's steps began to find Postgres or Redis down: retries back off with the outage's age.
    outage_since: float | None = None  # time.monotonic()
    # Tasks running at the provider (all workers), refreshed every sweep interval: stretches the poll schedule.
    running_estimate: int = 0
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    # Client webhooks: a client of their own (shared.callback_urls.new_webhook_client says why) and the name
    # resolver of every delivery (a seam: tests map names without real DNS).
    webhook_http: httpx.AsyncClient = field(
        default_factory=lambda: callback_urls.new_webhook_client(webhooks.TIMEOUT_SECONDS)
    )
    resolver: callback_urls.Resolver = callback_urls.system_resolver

    def model(self, task: asyncpg.Record) -> pricing.Model:
        """The task's model from the price list; a model since removed from it is rebuilt from the task row
        (its deadline is already in ``deadline_at``)."""
        m = self.prices.model(task["model"])
        if m is not None and m.family == task["family"]:
            return m
        return pricing.Model(
            model=task["model"],
            kind=task["kind"],
            family=task["family"],
            cost=task["cost"],
            deadline_seconds=1.0,
            typical_seconds=10.0,
        )


async def open_runtime(settings: Settings, redis: ArqRedis, pool: asyncpg.Pool | None = None) -> Runtime:
    """Build the runtime. Opens a pool unless given one (then the caller closes it). Raises Unavailable
    (Postgres), ConfigError (price list)."""
    prices = pricing.load(settings.pricing_path)
    owns = pool is None
    if pool is None:
        pool = await db.create_pool(settings)
    http = new_http_client(settings)
    ring = KeyRing(redis, settings)
    return Runtime(
        settings=settings,
        pool=pool,
        redis=redis,
        http=http,
        provider=ProviderClient(settings, http),
        budget=ring.first.budget,
        circuit=ring.first.circuit,
        prices=prices,
        keys=ring,
        owns_pool=owns,
    )


async def close_runtime(rt: Runtime) -> None:
    """Stop the background loops, close the HTTP client and (if owned) the pool. Idempotent."""
    for t in rt.background:
        t.cancel()
    for t in rt.background:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    rt.background.clear()
    await rt.http.aclose()
    await rt.webhook_http.aclose()
    if rt.owns_pool:
        await rt.pool.close()
