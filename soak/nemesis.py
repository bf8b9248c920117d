"""The nemesis: the planned faults, one at a time, each undone before the next (Jepsen's word for it).

- ``kill_worker`` / ``kill_workers`` / ``kill_api``: SIGKILL (of the process group), started again after ``down``
  seconds. An API process comes back on its own port, so the provider's callbacks to the first one are lost
  meanwhile.
- ``flushall``: Redis ``FLUSHALL`` (the queue, the limits, the provider-task notes: gone).
- ``redis_restart``: redis-server SIGKILLed (without persistence: everything lost) and started after ``down`` s.
- ``pg_stop``: ``pg_ctl stop -m immediate`` (a crash: every connection cut), started after ``down`` seconds.
- ``provider_out``: the simulator's balance set to 0 (creates answer 402) and topped up after ``down`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx
import redis.asyncio as aioredis

from soak.history import Log
from soak.world import SIM_CREDITS, World


class Nemesis:
    """Runs fault events against a world; :meth:`heal` undoes whatever is still broken."""

    def __init__(self, world: World, log: Log, http: httpx.AsyncClient) -> None:
        self.world = world
        self.log = log
        self.http = http
        self.held_down: set[str] = set()  # processes the nemesis killed and has not restarted yet
        self.count = 0
        self.kinds: dict[str, int] = {}

    async def strike(self, ev: dict[str, Any]) -> None:
        """Apply one fault and undo it after its ``down`` seconds. Never raises (a fault that fails is logged)."""
        kind = str(ev["fault"])
        down = float(ev.get("down", 0.0))
        self.count += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.log.write("fault", fault=kind, phase="start", event=ev)
        started = time.monotonic()
        try:
            await getattr(self, "_" + kind)(ev, down)
        except Exception as e:
            self.log.write("fault", fault=kind, phase="error", error=f"{type(e).__name__}: {e}")
        self.log.write("fault", fault=kind, phase="end", took=round(time.monotonic() - started, 2))

    async def _kill(self, names: list[str], down: float) -> None:
        procs = [p for p in (*self.world.apis, *self.world.workers) if p.name in names]
        self.held_down.update(names)
        try:
            for p in procs:
                p.kill()
            await asyncio.sleep(down)
        finally:
            for p in procs:
                if not p.alive():
                    p.start()
            self.held_down.difference_update(names)

    async def _kill_worker(self, ev: dict[str, Any], down: float) -> None:
        await self._kill([self.world.workers[int(ev["index"]) % len(self.world.workers)].name], down)

    async def _kill_workers(self, ev: dict[str, Any], down: float) -> None:
        await self._kill([w.name for w in self.world.workers], down)

    async def _kill_api(self, ev: dict[str, Any], down: float) -> None:
        api = self.world.apis[int(ev["index"]) % len(self.world.apis)]
        await self._kill([api.name], down)
        with contextlib.suppress(RuntimeError):
            await asyncio.to_thread(self.world.wait_http, api, "/healthz", 20)

    async def _flushall(self, ev: dict[str, Any], down: float) -> None:
        assert self.world.redis is not None
        r = aioredis.Redis.from_url(self.world.redis.url, socket_timeout=5)
        try:
            await r.flushall()
        finally:
            await r.aclose()

    async def _redis_restart(self, ev: dict[str, Any], down: float) -> None:
        redis = self.world.redis
        assert redis is not None
        await _down_for(redis.kill, redis.start, down)

    async def _pg_stop(self, ev: dict[str, Any], down: float) -> None:
        pg = self.world.pg
        assert pg is not None
        await _down_for(pg.stop, pg.start, down)

    async def _provider_out(self, ev: dict[str, Any], down: float) -> None:
        await self._credits(0)
        try:
            await asyncio.sleep(down)
        finally:
            await self._credits(SIM_CREDITS)

    async def _credits(self, credits: float) -> None:
        assert self.world.sim is not None
        r = await self.http.post(f"{self.world.sim.url}/__sim/credits", json={"credits": credits}, timeout=10)
        r.raise_for_status()

    async def heal(self) -> list[str]:
        """Make sure everything is up: Postgres, Redis, the provider's credits, every process. Returns what it
        had to repair."""
        repaired: list[str] = []
        pg, redis = self.world.pg, self.world.redis
        assert pg is not None
        assert redis is not None
        try:
            await asyncio.to_thread(pg.start)
            repaired.append("postgres")
        except RuntimeError:
            pass  # already running
        if not redis.running():
            await asyncio.to_thread(redis.start)
            repaired.append("redis")
        with contextlib.suppress(httpx.HTTPError):
            await self._credits(SIM_CREDITS)
        self.held_down.clear()
        repaired += self.world.revive()
        return repaired


async def _down_for(stop: Callable[[], object], start: Callable[[], object], down: float) -> None:
    """Stop a service (in a thread: it blocks), keep it down ``down`` seconds, start it again whatever happens."""
    await asyncio.to_thread(stop)
    try:
        await asyncio.sleep(down)
    finally:
        await asyncio.to_thread(start)
