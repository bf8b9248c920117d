"""The API process's connections to Postgres and Redis, opened lazily and retried in the background.

The app starts even when Postgres or Redis is down (docs/API.md: a down service is a 503, not a dead process):
the lifespan only starts a background task that connects, and a request that needs a connection not yet made
tries once itself. While a service stays down, requests fail fast for a moment after each failed attempt
instead of each waiting out a connect timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import asyncpg
import structlog
from arq.connections import ArqRedis
from starlette.requests import Request

from api.authcache import AuthCache
from shared import db, queue
from shared.config import Settings
from shared.errors import Unavailable
from shared.ledger import tasks
from shared.ledger.audit import Report
from shared.pricing import Pricing

T = TypeVar("T")
log = structlog.get_logger("creditq.api")

# After a failed connect, requests within this many seconds fail at once with the same error.
FAIL_FAST_SECONDS = 1.0
# The background task's wait between attempts grows up to this.
MAX_RETRY_SECONDS = 10.0


class Lazy(Generic[T]):
    """One connection (pool) made on first need; concurrent callers share one attempt."""

    def __init__(self, name: str, open_: Callable[[], Awaitable[T]], close: Callable[[T], Awaitable[None]]) -> None:
        self.name = name
        self._open = open_
        self._close = close
        self._value: T | None = None
        self._attempt: asyncio.Task[T] | None = None
        self._error: str | None = None
        self._failed_at = 0.0

    @property
    def ready(self) -> bool:
        """True once connected."""
        return self._value is not None

    async def get(self) -> T:
        """The connection; connects first if needed. Raises Unavailable when it cannot."""
        if self._value is not None:
            return self._value
        if self._attempt is None:
            if self._error is not None and time.monotonic() - self._failed_at < FAIL_FAST_SECONDS:
                raise Unavailable(self._error)
            self._attempt = asyncio.get_running_loop().create_task(self._connect())
        # Shielded: one caller giving up must not cancel the attempt the others wait for.
        return await asyncio.shield(self._attempt)

    async def _connect(self) -> T:
        try:
            value = await self._open()
        except Exception as e:
            # Wrong passwords and missing databases count too: the service is not usable, and /readyz says so.
            self._error = e.message if isinstance(e, Unavailable) else f"{self.name}: {type(e).__name__}: {e}"
            self._failed_at = time.monotonic()
            log.warning("service.connect_failed", service=self.name, error=self._error)
            raise Unavailable(self._error) from e
        finally:
            self._attempt = None
        if self._error is not None:
            log.info("service.connected", service=self.name)
        self._value, self._error = value, None
        return value

    async def close(self) -> None:
        """Close the connection (and abandon an attempt in flight)."""
        if self._attempt is not None:
            self._attempt.cancel()
            with contextlib.suppress(BaseException):
                await self._attempt
        value, self._value = self._value, None
        if value is not None:
            await self._close(value)


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), 10)
    except TimeoutError:
        pool.terminate()


async def _close_redis(redis: ArqRedis) -> None:
    await redis.aclose()


@dataclass(slots=True)
class AuditCache:
    """The last audit report this API process ran and when (wall clock); one audit at a time. The operator's
    page shows it while it is fresh (``api.ops``), and a reconcile refreshes it."""

    report: Report | None = None
    at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def store(self, report: Report) -> None:
        """Keep ``report`` as the newest audit."""
        self.report, self.at = report, time.time()


class Services:
    """What every request handler needs: settings, the price list, the lazy connections, and this process's
    last audit."""

    def __init__(self, settings: Settings, pricing: Pricing) -> None:
        self.settings = settings
        self.pricing = pricing
        self.postgres: Lazy[asyncpg.Pool] = Lazy("postgres", lambda: db.create_pool(settings), _close_pool)
        #: Group commit of this process's submits, across accounts (see shared.ledger.tasks.SubmitBatcher).
        self.submits = tasks.SubmitBatcher()
        self.redis: Lazy[ArqRedis] = Lazy("redis", lambda: queue.connect(settings), _close_redis)
        #: The last audit run by this process (the operator's page and ``GET /v1/admin/reconcile``).
        self.audit_cache = AuditCache()
        #: API key → account, kept exact by Postgres notifications (api.authcache).
        self.auth_cache = AuthCache(settings)
        #: What endpoint modules open on first use and close with the app (the status stream's task feed).
        self.extras: dict[str, Any] = {}
        self.closers: list[Callable[[], Awaitable[None]]] = []
        self._warmer: asyncio.Task[None] | None = None

    async def db(self) -> asyncpg.Pool:
        """The Postgres pool. Raises Unavailable."""
        return await self.postgres.get()

    async def arq(self) -> ArqRedis:
        """The Redis (arq) pool; also used for limits and the circuit flag. Raises Unavailable."""
        return await self.redis.get()

    def start(self) -> None:
        """Start connecting in the background; returns at once."""
        self._warmer = asyncio.get_running_loop().create_task(self._warm())
        self.auth_cache.start()

    async def _warm(self) -> None:
        delay = FAIL_FAST_SECONDS
        while not (self.postgres.ready and self.redis.ready):
            for lazy in (self.postgres, self.redis):
                if not lazy.ready:
                    with contextlib.suppress(Unavailable):
                        await lazy.get()
            if self.postgres.ready and self.redis.ready:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)

    async def close(self) -> None:
        """Close what endpoint modules opened (``closers``), stop connecting and close both pools."""
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):
                await closer()
        self.closers.clear()
        if self._warmer is not None:
            self._warmer.cancel()
            with contextlib.suppress(BaseException):
                await self._warmer
        await self.auth_cache.close()
        await self.postgres.close()
        await self.redis.close()


def services(request: Request) -> Services:
    """The app's :class:`Services` (set by :func:`api.app.create_app`)."""
    return cast(Services, request.app.state.services)
