"""The provider's budget, shared by every worker through Redis: rate limits and the out-of-credits circuit.

KIE.ai limits each API key to ``KIE_CREATE_LIMIT`` creates per ``KIE_CREATE_WINDOW`` seconds and
``KIE_QUERY_LIMIT`` status queries per second, whoever sends them. :class:`ProviderBudget` keeps a sliding-window
log per kind in one Redis sorted set (a Lua script reads Redis's own ``TIME``, so workers' clocks do not matter)
under ``{CREDITQ_QUEUE}:budget:<sha256(KIE_API_KEY)[:16]>:<kind>``. A window is counted a little longer than the
provider's (5 %, at least 100 ms) because our grant and the provider's arrival are not the same instant.

:class:`Circuit` says "the provider account is out of credits: stop submitting". It is a Redis key with a
time-to-live (the cool-down): whoever sees a 402 opens it, the worker's credit poll closes it as soon as the
provider shows credits again, and if nobody can tell, it closes by itself after the cool-down so that the next
create probes the provider.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from typing import Any, Literal

from redis.asyncio import Redis

from shared.config import Settings

Kind = Literal["create", "query"]

# KEYS[1]: the kind's log (ZSET of grant times in µs). ARGV: limit, window (µs), a unique member.
# Returns 0 when granted (and recorded), else the µs until the oldest grant leaves the window.
_SLIDING_WINDOW = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
    return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""

MARGIN = 0.05
MIN_MARGIN_SECONDS = 0.1


def key_id(settings: Settings) -> str:
    """The API key's public name in Redis keys: 16 hex characters of its SHA-256 (never the key itself)."""
    return hashlib.sha256(settings.kie_api_key.encode()).hexdigest()[:16]


class ProviderBudget:
    """Tokens for provider calls, shared by all workers using the same queue prefix and API key."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        prefix = f"{settings.queue_name}:budget:{key_id(settings)}"
        self._limits: dict[str, tuple[str, int, float]] = {
            "create": (f"{prefix}:create", settings.kie_create_limit, _padded(settings.kie_create_window)),
            "query": (f"{prefix}:query", settings.kie_query_limit, _padded(1.0)),
        }
        self._script = redis.register_script(_SLIDING_WINDOW)

    async def try_acquire(self, kind: Kind) -> float:
        """Take one token of ``kind`` if the window has room: 0.0 (granted and recorded). Otherwise record
        nothing and return the seconds until a slot frees. One Redis round trip; raises redis errors."""
        key, limit, window = self._limits[kind]
        micros = await self._script(keys=[key], args=[limit, int(window * 1_000_000), uuid.uuid4().hex])
        return int(micros) / 1_000_000

    async def acquire_or_wait(self, kind: Kind, max_wait: float) -> float:
        """Wait (in small, jittered steps) up to ``max_wait`` seconds for a token: 0.0 when granted, else the
        seconds still to wait for the next free slot (nothing recorded). Raises redis errors."""
        deadline = time.monotonic() + max_wait
        while True:
            wait = await self.try_acquire(kind)
            if wait <= 0:
                return 0.0
            left = deadline - time.monotonic()
            if wait > left:
                return wait
            # Waiters that all wake at the slot's edge would stampede the script; a little jitter spreads them.
            await asyncio.sleep(min(left, wait + random.uniform(0, 0.05)))

    async def acquire(self, kind: Kind, max_wait: float) -> bool:
        """True once a token of ``kind`` is taken, False if none freed within ``max_wait`` seconds."""
        return await self.acquire_or_wait(kind, max_wait) == 0.0


def _padded(window: float) -> float:
    return window + max(window * MARGIN, MIN_MARGIN_SECONDS)


class Circuit:
    """The out-of-credits switch at ``{CREDITQ_QUEUE}:circuit``; open while the key exists."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self.key = circuit_key(settings)

    async def is_open(self) -> bool:
        """True while submitting is stopped. One Redis read; raises redis errors."""
        return bool(await self._redis.exists(self.key))

    async def info(self) -> dict[str, Any] | None:
        """Why and since when the circuit is open, or None when it is closed (for /readyz and the admin page)."""
        raw = await self._redis.get(self.key)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return {"reason": "unknown"}
        return value if isinstance(value, dict) else {"reason": "unknown"}

    async def open(self, reason: str, cooldown: float) -> bool:
        """Open (or keep open) for at least ``cooldown`` seconds. Idempotent; True when this call opened it."""
        value = json.dumps({"reason": reason, "since": time.time()})
        opened = await self._redis.set(self.key, value, px=int(cooldown * 1000), nx=True)
        if not opened:
            await self._redis.pexpire(self.key, int(cooldown * 1000), gt=True)
        return bool(opened)

    async def close(self) -> bool:
        """Close: submitting resumes. Idempotent; True when this call closed it."""
        return bool(await self._redis.delete(self.key))


def circuit_key(settings: Settings) -> str:
    """The Redis key of the circuit (the API's /readyz reads it to report "degraded")."""
    return f"{settings.queue_name}:circuit"
