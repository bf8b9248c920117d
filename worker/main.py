"""``creditq worker``: run one arq worker until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging

import structlog
from arq.worker import create_worker

from shared import db, queue
from shared.config import Settings
from worker.settings import make

log = structlog.get_logger("creditq.worker")


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
        worker = create_worker(make(settings), redis_pool=redis, ctx={"settings": settings, "pool": pool})
        try:
            worker.run()  # closes the Redis pool and runs on_shutdown
        finally:
            loop.run_until_complete(pool.close())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return 0
