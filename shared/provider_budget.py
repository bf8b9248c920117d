"""The provider's budget, shared by every worker through Redis: rate limits and the out-of-credits circuit.

KIE.ai limits each API key to ``KIE_CREATE_LIMIT`` creates per ``KIE_CREATE_WINDOW`` seconds and
``KIE_QUERY_LIMIT`` status queries per second, whoever sends them. :class:`ProviderBudget` keeps a sliding-window
log per key and kind in one Redis sorted set (a Lua script reads Redis's own ``TIME``, so workers' clocks do not
matter) under ``{CREDITQ_QUEUE}:budget:<sha256(key)[:16]>:<kind>``. With several keys (``KIE_API_KEYS``, several
provider accounts) each has its own budget and circuit; :class:`KeyRing` holds them and spreads creates over the
keys that have room.

The provider counts a request when it arrives, which is some time after our grant: a cold connection, a TLS
handshake or a busy event loop can make that most of a second, enough to put 21 creates in the provider's 10 s.
So a grant taken with a ``token`` is logged as *in flight* (at the latest time the request could arrive: now +
``KIE_TIMEOUT``) until :meth:`ProviderBudget.done` moves it to the moment the answer came back, an upper bound of
the arrival. Each log entry is therefore never earlier than the provider's own, and the window is counted a
little longer than the provider's (5 %, at least 100 ms) for clocks that tick at different rates.

:class:`Circuit` says "this key's account cannot create now: stop submitting with it" (402 out of credits, 401
bad key, 433 usage cap). It is a Redis key per provider key with a time-to-live (the cool-down): whoever sees such
a refusal opens it, the worker's credit poll closes an out-of-credits one as soon as the provider shows credits
again, and if nobody can tell, it closes by itself after the cool-down so that the next create probes the
provider.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.asyncio import Redis

from shared import redis_keys
from shared.config import Settings
from shared.lua import Script

Kind = Literal["create", "query"]

# KEYS[1]: the kind's log (ZSET: member → latest possible arrival, µs). ARGV: limit, window (µs), a unique member,
# flight allowance (µs; 0 = the request is as good as sent). Returns 0 when granted (and logged), else the µs
# until a slot may free: an entry in flight frees no sooner than a window after now.
_SLIDING_WINDOW = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
    local flight = tonumber(ARGV[4])
    redis.call('ZADD', KEYS[1], now + flight, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], math.ceil((window + flight) / 1000) + 1000)
    return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, math.min(tonumber(oldest[2]), now) + window - now)
"""

# KEYS: the logs; ARGV: their windows (µs). The number of entries of each still inside its window.
_USAGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
    out[i] = redis.call('ZCOUNT', key, '(' .. (now - tonumber(ARGV[i])), '+inf')
end
return out
"""

# KEYS[1]: the log; ARGV[1]: the member. The answer came back now: never later than that did it arrive.
_DONE = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', 'LT', tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
return 0
"""

MARGIN = 0.05
MIN_MARGIN_SECONDS = 0.1


def key_id(settings: Settings, api_key: str | None = None) -> str:
    """A provider key's public name (in Redis keys, on tasks, in logs): 16 hex characters of its SHA-256, never
    the key itself. ``api_key`` defaults to the first of the settings' keys."""
    secret = settings.provider_keys[0] if api_key is None else api_key
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


_CANCEL = "return redis.call('ZREM', KEYS[1], ARGV[1])"

# A create slot on the first key, from a given start, whose circuit is closed and whose window has room: the
# circuit checks and the take in one round trip, whatever the number of keys. KEYS: circuit 1, create log 1,
# circuit 2, create log 2, ... ARGV: limit, window (µs), member, flight (µs), the key to start from (1-based).
# Returns {i, 0}: granted on key i (logged as in flight); {0, µs}: every closed key is full, a slot may free in
# that many µs; {0, -1}: every circuit is open.
_TAKE_CREATE = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local n = #KEYS / 2
local start = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local shortest = -1
for j = 0, n - 1 do
    local i = (start - 1 + j) % n + 1
    if redis.call('EXISTS', KEYS[2 * i - 1]) == 0 then
        local log = KEYS[2 * i]
        redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
        if redis.call('ZCARD', log) < limit then
            local flight = tonumber(ARGV[4])
            redis.call('ZADD', log, now + flight, ARGV[3])
            redis.call('PEXPIRE', log, math.ceil((window + flight) / 1000) + 1000)
            return {i, 0}
        end
        local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
        local wait = math.max(1, math.min(tonumber(oldest[2]), now) + window - now)
        if shortest < 0 or wait < shortest then
            shortest = wait
        end
    end
end
return {0, shortest}
"""

# KEYS[1]: the log, KEYS[2]: the provider-id note. ARGV: the member, the provider's task id, the note's lifetime
# (s). The create answered now (as _DONE) and named its task: noted in the same round trip.
_DONE_NOTED = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', 'LT', tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
return 0
"""

_sliding_window = Script(_SLIDING_WINDOW)
_done = Script(_DONE)
_usage = Script(_USAGE)
_cancel = Script(_CANCEL)
_take_create = Script(_TAKE_CREATE)
_done_noted = Script(_DONE_NOTED)


class ProviderBudget:
    """Tokens for provider calls with one key (default: the first), shared by all workers using the same queue
    prefix and key."""

    def __init__(self, redis: Redis, settings: Settings, api_key: str | None = None) -> None:
        self._redis = redis
        q, kid = settings.queue_name, key_id(settings, api_key)
        self._limits: dict[str, tuple[str, int, float]] = {
            "create": (
                redis_keys.budget(q, kid, "create"),
                settings.kie_create_limit,
                _padded(settings.kie_create_window),
            ),
            "query": (redis_keys.budget(q, kid, "query"), settings.kie_query_limit, _padded(1.0)),
        }
        self._flight_us = int(settings.kie_timeout * 1_000_000)

    def log(self, kind: Kind) -> str:
        """The Redis key of ``kind``'s sliding-window log."""
        return self._limits[kind][0]

    def limit(self, kind: Kind) -> int:
        """Calls of ``kind`` allowed per window."""
        return self._limits[kind][1]

    def window(self, kind: Kind) -> float:
        """``kind``'s window in seconds, as counted (padded beyond the provider's, see the module docstring)."""
        return self._limits[kind][2]

    @property
    def flight_us(self) -> int:
        """How long (µs) a grant taken with a token counts as in flight before :meth:`done`: ``KIE_TIMEOUT``."""
        return self._flight_us

    @staticmethod
    def new_token() -> str:
        """A token naming one call, for :meth:`try_acquire` and :meth:`done`."""
        return uuid.uuid4().hex

    async def try_acquire(self, kind: Kind, token: str | None = None) -> float:
        """Take one slot of ``kind`` if the window has room: 0.0 (granted and logged). Otherwise log nothing and
        return the seconds until a slot may free. With ``token`` the grant is logged as in flight until
        :meth:`done` (call it when the answer is in); without, as sent at the grant. One Redis round trip;
        raises redis errors."""
        key, limit, window = self._limits[kind]
        member = token or uuid.uuid4().hex
        flight = self._flight_us if token else 0
        micros = await _sliding_window(self._redis, [key], [limit, int(window * 1_000_000), member, flight])
        return int(micros) / 1_000_000

    async def done(self, kind: Kind, token: str, note: tuple[str, str, int] | None = None) -> None:
        """The call granted under ``token`` has its answer: count it from now, not from the latest time it could
        have arrived. ``note`` (Redis key, value, seconds): also set that key, in the same round trip (a create
        names its provider task id: :func:`shared.provider.provider_note`). Idempotent. Raises redis errors
        (then the slot frees after ``KIE_TIMEOUT`` + window, and the note is not written)."""
        log = self._limits[kind][0]
        if note is None:
            await _done(self._redis, [log], [token])
        else:
            await _done_noted(self._redis, [log, note[0]], [token, note[1], note[2]])

    async def cancel(self, kind: Kind, token: str) -> None:
        """The call granted under ``token`` was never sent: give its slot back. Idempotent; raises redis errors."""
        await _cancel(self._redis, [self._limits[kind][0]], [token])

    async def usage(self) -> dict[str, tuple[int, int]]:
        """Kind → (calls counted in the current window, limit), for /metrics. Read-only; raises redis errors."""
        kinds = list(self._limits)
        counts = await _usage(
            self._redis, [self._limits[k][0] for k in kinds], [int(self._limits[k][2] * 1_000_000) for k in kinds]
        )
        return {k: (int(n), self._limits[k][1]) for k, n in zip(kinds, counts, strict=True)}

    async def acquire_or_wait(self, kind: Kind, max_wait: float, token: str | None = None) -> float:
        """Wait (in small, jittered steps) up to ``max_wait`` seconds for a slot: 0.0 when granted, else the
        seconds still to wait for the next free slot (nothing logged). Raises redis errors."""
        deadline = time.monotonic() + max_wait
        while True:
            wait = await self.try_acquire(kind, token)
            if wait <= 0:
                return 0.0
            left = deadline - time.monotonic()
            if wait > left:
                return wait
            # Waiters that all wake at the slot's edge would stampede the script; a little jitter spreads them.
            await asyncio.sleep(min(left, wait + random.uniform(0, 0.05)))

    async def acquire(self, kind: Kind, max_wait: float, token: str | None = None) -> bool:
        """True once a slot of ``kind`` is taken, False if none freed within ``max_wait`` seconds."""
        return await self.acquire_or_wait(kind, max_wait, token) == 0.0


def _padded(window: float) -> float:
    return window + max(window * MARGIN, MIN_MARGIN_SECONDS)


class Circuit:
    """One provider key's switch at ``{CREDITQ_QUEUE}:circuit:<key id>``; open while the Redis key exists.
    ``api_key`` defaults to the first of the settings' keys."""

    def __init__(self, redis: Redis, settings: Settings, api_key: str | None = None) -> None:
        self._redis = redis
        self.key = circuit_key(settings, api_key)

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


def circuit_key(settings: Settings, api_key: str | None = None) -> str:
    """The Redis key of a provider key's circuit (default: the first key's)."""
    return redis_keys.circuit(settings.queue_name, key_id(settings, api_key))


def circuit_keys(settings: Settings) -> list[str]:
    """The Redis keys of every configured provider key's circuit: /readyz says "degraded" while any exists."""
    return [circuit_key(settings, k) for k in settings.provider_keys]


async def open_circuit_info(redis: Redis, settings: Settings) -> dict[str, Any] | None:
    """Why and since when the first open circuit among the configured keys is open (with its ``providerKey``
    id and how many of the keys are open), or None when every key's circuit is closed. For /metrics and the
    admin page. Raises redis errors."""
    keys = settings.provider_keys
    opened: list[tuple[str, dict[str, Any]]] = []
    for k in keys:
        info = await Circuit(redis, settings, k).info()
        if info is not None:
            opened.append((key_id(settings, k), info))
    if not opened:
        return None
    ident, info = opened[0]
    return {**info, "providerKey": ident, "openKeys": len(opened), "keys": len(keys)}


@dataclass(frozen=True, eq=False)
class ProviderKey:
    """One provider key with its public id, budget and circuit. ``secret`` never reaches a log or Redis."""

    secret: str = field(repr=False)
    id: str
    budget: ProviderBudget
    circuit: Circuit


class KeyRing:
    """Every configured provider key (``KIE_API_KEYS``), in order. Creates go to a key whose circuit is closed
    and whose create budget has room, starting from a random one so that the keys share the load; a task's
    status queries go to the key that created it."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self.keys = [
            ProviderKey(k, key_id(settings, k), ProviderBudget(redis, settings, k), Circuit(redis, settings, k))
            for k in settings.provider_keys
        ]
        self._by_id = {k.id: k for k in self.keys}

    @property
    def first(self) -> ProviderKey:
        """The first key: the one for calls that belong to no task (the credit balance) and old tasks."""
        return self.keys[0]

    def by_id(self, ident: str | None) -> ProviderKey:
        """The key with public id ``ident``; the first key when ``ident`` is None (a task from before keys were
        recorded) or names a key no longer configured (rotated out: its tasks are followed with the first)."""
        if ident is None:
            return self.first
        return self._by_id.get(ident, self.first)

    async def open_circuits(self) -> list[ProviderKey]:
        """The keys whose circuit is open now. One Redis round trip per key; raises redis errors."""
        return [k for k in self.keys if await k.circuit.is_open()]

    async def take_create(self, max_wait: float, token: str) -> tuple[ProviderKey | None, float]:
        """A create slot on some key whose circuit is closed: (key, 0.0), logged in flight under ``token``.
        Else (None, seconds until one may free): ``inf`` when every circuit is open. Starts from a random key,
        so that the keys share the load. One Redis round trip per attempt (the circuits and the take in one
        script); waits in jittered steps up to ``max_wait`` seconds. Raises redis errors."""
        first = self.keys[0].budget
        keys = [k for key in self.keys for k in (key.circuit.key, key.budget.log("create"))]
        limit, window, flight = first.limit("create"), int(first.window("create") * 1_000_000), first.flight_us
        deadline = time.monotonic() + max_wait
        while True:
            start = random.randrange(len(self.keys)) + 1
            index, micros = await _take_create(self._redis, keys, [limit, window, token, flight, start])
            if int(index) > 0:
                return self.keys[int(index) - 1], 0.0
            if int(micros) < 0:
                return None, math.inf
            shortest = int(micros) / 1_000_000
            left = deadline - time.monotonic()
            if shortest > left:
                return None, shortest
            await asyncio.sleep(min(left, shortest + random.uniform(0, 0.05)))
