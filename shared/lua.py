"""The one runner of creditq's Lua scripts in Redis (tier limits, the provider budget, the poke gate).

A script is sent once per Redis server and then named by its SHA-1 (``EVALSHA``): a server that does not know it
(a restart, a flush, a fail-over) answers NOSCRIPT and the script is sent whole (``EVAL``), which also loads it.
Each script runs atomically in Redis, against Redis's own clock when it reads ``TIME``, so every
check-and-count is exact however many processes race.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import Unavailable


class Script:
    """A Lua script, run by :meth:`__call__`. ``unavailable``: a connection error (Redis unreachable, a
    timeout) is raised as :class:`~shared.errors.Unavailable` (the callers answer 503); else redis's own errors
    are raised as they are."""

    def __init__(self, source: str, *, unavailable: bool = False) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        self.unavailable = unavailable

    async def __call__(self, redis: Redis, keys: Sequence[str], args: Sequence[str | int | float | bytes]) -> Any:
        """Run the script with ``keys`` (KEYS) and ``args`` (ARGV: bytes as they are, the rest as text) in one
        round trip (two the first time on a server). Returns what the script returns. Raises redis errors, or
        Unavailable (see the class)."""
        argv: list[Any] = [*keys, *(a if isinstance(a, bytes) else str(a) for a in args)]
        try:
            try:
                return await cast(Awaitable[Any], redis.evalsha(self.sha, len(keys), *argv))
            except NoScriptError:
                return await cast(Awaitable[Any], redis.eval(self.source, len(keys), *argv))
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            if self.unavailable:
                raise Unavailable(f"Redis is unreachable (REDIS_URL): {e}") from e
            raise
