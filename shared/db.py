"""Postgres connections: one asyncpg pool per process, and the one place that turns "cannot connect" into
:class:`~shared.errors.Unavailable`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg

from shared.config import Settings
from shared.errors import Unavailable

T = TypeVar("T")

# Errors that mean "the database is not there right now", as opposed to "the query is wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionFailureError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset query (``RESET ALL``, ``UNLISTEN *``...): one round trip per
    release, 6-23 % of the submit path (BENCHMARKS.md). Safe because creditq never changes session state on a
    pooled connection: no SET, LISTEN, advisory lock or cursor outlives a call; every transaction is inside
    one SQL function."""


async def create_pool(settings: Settings, min_size: int = 1, max_size: int | None = None) -> asyncpg.Pool:
    """Open the pool. Raises Unavailable (naming DATABASE_URL) if Postgres cannot be reached within 5 s.

    Queries on the pool time out after 5 s on a dead connection, so an outage is an error, not a hang.
    """
    try:
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=min_size,
            max_size=max_size or settings.db_pool_size,
            init=_init_connection,
            reset=_keep_session,
            timeout=5,
            command_timeout=30,
            max_inactive_connection_lifetime=60,
        )
    except CONNECTION_ERRORS as e:
        raise Unavailable(f"Postgres is unreachable at DATABASE_URL ({redact_url(settings.database_url)}): {e}") from e
    except asyncpg.exceptions.InvalidCatalogNameError as e:
        raise Unavailable(
            f"DATABASE_URL names a database that does not exist ({redact_url(settings.database_url)}): "
            "create it, or run `creditq migrate`"
        ) from e
    assert pool is not None
    return pool


@asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """Borrow a connection; a connection failure becomes Unavailable."""
    try:
        async with pool.acquire(timeout=5) as conn:
            yield conn
    except CONNECTION_ERRORS as e:
        raise Unavailable(f"Postgres is unreachable: {type(e).__name__}: {e}") from e


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}" if scheme else f"{user}@{host}"
