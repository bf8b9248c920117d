"""``creditq worker``: run one arq worker until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import structlog
from arq.worker import Worker, get_kwargs
from redis.exceptions import RedisError

from shared import db, queue
from shared.config import Settings
from worker.settings import make

log = structlog.get_logger("creditq.worker")

REDIS_RETRY = (1.0, 3.0)  # seconds between two looks at Redis while it is unreachable


class _Worker(Worker):
    """arq's worker, except that Redis going away under its poll loop is waited out instead of ending the
    process (arq's own loop lets the connection error escape and the worker exits: found by the soak,
    docs/SOAK.md). Steps in flight handle their own Redis errors (they re-schedule); the sweeper re-enqueues
    from Postgres whatever a Redis restart lost."""

    _redis_down_since: float | None = None

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as e:
            loop = asyncio.get_running_loop()
            if self._redis_down_since is None:
                self._redis_down_since = loop.time()
                log.warning("worker.redis_unavailable", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(random.uniform(*REDIS_RETRY))
            return
        if self._redis_down_since is not None:
            down = asyncio.get_running_loop().time() - self._redis_down_since
            log.info("worker.redis_back", down_seconds=round(down, 1))
            self._redis_down_since = None


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (a dependency on Linux): +16 % settled tasks/s in BENCHMARKS.md's variants run."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(settings: Settings) -> int:
    """Run a worker in this process until a signal; returns the exit status (0 after a clean stop).

    Postgres and Redis are reached before any job is taken: either unreachable raises Unavailable with a
    one-line message (the CLI prints it). Logging must already be configured.
    """
    if logging.getLogger().level > logging.DEBUG:
        # arq's two lines per step would drown the task lines; its warnings and errors still show.
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        redis = loop.run_until_complete(queue.connect(settings))
        try:
            pool = loop.run_until_complete(db.create_pool(settings))
        except BaseException:
            loop.run_until_complete(redis.aclose())
            raise
        # What arq.worker.create_worker does, with our class.
        kwargs: dict[str, Any] = {
            **get_kwargs(make(settings)),
            "redis_pool": redis,
            "ctx": {"settings": settings, "pool": pool},
        }
        worker = _Worker(**kwargs)
        try:
            worker.run()  # closes the Redis pool and runs on_shutdown
        finally:
            loop.run_until_complete(pool.close())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return 0
