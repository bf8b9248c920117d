"""Work that one worker of the fleet does per interval, whichever one it is."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from worker.runtime import Runtime

log = structlog.get_logger("creditq.worker")


async def once_per_interval(
    rt: Runtime, key: str, interval: float, tick: float, fn: Callable[[Runtime], Awaitable[Any]], failed: str
) -> None:
    """Run ``fn(rt)`` about every ``interval`` seconds across all workers, until cancelled.

    Every ``tick`` (jittered) each worker tries the Redis lock ``key`` (``SET NX PX``, held ``interval - tick``, so
    the next run comes within a tick of its time); the one that takes it runs ``fn``. An error (Postgres or
    Redis down) is logged as ``failed`` and the next tick tries again: an outage never ends the loop.
    """
    lock_ms = max(int((interval - tick) * 1000), 1)
    while True:
        try:
            if await rt.redis.set(key, "1", nx=True, px=lock_ms):
                await fn(rt)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning(failed, error=f"{type(e).__name__}: {e}")
        await asyncio.sleep(tick * random.uniform(0.8, 1.2))
