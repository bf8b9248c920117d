"""The API process's cache of API keys: key hash → what the key resolves to (account id, tier, status, the key's
expiry and revocation), so that a request authenticates without a Postgres round trip.

Exact within a bound (docs/CONFIGURATION.md, ``CREDITQ_AUTH_CACHE_SECONDS``):

- Every change that matters to a key (revoked, expiry changed, account suspended or resumed, tier changed, key
  or account deleted) notifies Postgres channel ``creditq_auth`` with the account id, from a trigger in the
  changing transaction (migration 011), whoever makes it: the admin endpoints, a payment event's SQL function,
  the CLI, psql. Each API process LISTENs on its own connection and drops that account's entries when the
  notification arrives: a few milliseconds after the commit.
- Entries are filled only while that LISTEN connection is up, and a fill that raced a notification (the read
  began before the notification arrived and ended after) is not kept. When the connection drops, the cache is
  emptied and bypassed (every request reads Postgres) until it is back.
- Each entry lives at most ``CREDITQ_AUTH_CACHE_SECONDS`` (default 5) however quiet the channel: the backstop for
  a notification lost in a way the connection did not notice. 0 turns the cache off.
- A key's expiry is checked against the clock at every request, not at the fill.
- Unknown keys are not cached (a key created a moment ago must work at once); neither is a balance: the account
  view reads its account fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import structlog

from shared.config import Settings
from shared.ledger import accounts

log = structlog.get_logger("creditq.api")

CHANNEL = "creditq_auth"
# Waits between attempts to (re)open the LISTEN connection.
_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True, slots=True)
class _Entry:
    check: accounts.KeyCheck
    expires_at: datetime | None  # the key's own expiry
    stale_at: float  # monotonic: the entry's TTL


class AuthCache:
    """key hash → :class:`~shared.ledger.accounts.KeyCheck`, invalidated by Postgres notifications (see the
    module docstring for the bound). One per API process; :meth:`start` runs its listener."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ttl = settings.auth_cache_seconds
        self._entries: dict[bytes, _Entry] = {}
        self._by_account: dict[str, set[bytes]] = {}
        # Bumped by every invalidation: a fill that saw it change while it read Postgres is not kept.
        self._generation = 0
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None

    @property
    def enabled(self) -> bool:
        """True while entries may be served: the cache is on and its LISTEN connection is up."""
        return self._listening and self._ttl > 0

    def start(self) -> None:
        """Start the listener in the background (a no-op when the cache is off)."""
        if self._ttl > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen_forever())

    async def close(self) -> None:
        """Stop listening and forget every entry."""
        self._drop_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 2)
            self._conn = None

    async def authenticate(self, pool: accounts.Conn, key: str) -> accounts.KeyCheck | None:
        """What ``key`` resolves to, as :func:`shared.ledger.accounts.authenticate` (None when unknown), from the
        cache when it holds a fresh entry, else from Postgres (then kept, if the listener is up and nothing was
        invalidated meanwhile). Raises what the Postgres read raises."""
        digest = accounts.hash_key(key)
        entry = self._entries.get(digest)
        if entry is not None:
            if self.enabled and time.monotonic() < entry.stale_at:
                return _checked_now(entry)
            self._drop(digest, entry.check.account.id)
        generation = self._generation
        found = await accounts.authenticate_hashed(pool, digest)
        if found is None:
            return None
        check, expires_at = found
        if self.enabled and generation == self._generation:
            account_id = check.account.id
            self._entries[digest] = _Entry(check, expires_at, time.monotonic() + self._ttl)
            self._by_account.setdefault(account_id, set()).add(digest)
        return check

    def invalidate(self, account_id: str) -> None:
        """Forget the account's keys (a notification said something about them changed)."""
        self._generation += 1
        for digest in self._by_account.pop(account_id, ()):
            self._entries.pop(digest, None)

    def _drop(self, digest: bytes, account_id: str) -> None:
        self._entries.pop(digest, None)
        keys = self._by_account.get(account_id)
        if keys is not None:
            keys.discard(digest)
            if not keys:
                del self._by_account[account_id]

    def _drop_all(self) -> None:
        self._generation += 1
        self._listening = False
        self._entries.clear()
        self._by_account.clear()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.invalidate(payload)

    async def _listen_forever(self) -> None:
        attempt = 0
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._settings.database_url, timeout=5)
            except Exception as e:  # Postgres down or refusing: the cache stays off meanwhile
                log.warning("auth_cache.listen_failed", reading="postgres", error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(_RETRY_SECONDS[min(attempt, len(_RETRY_SECONDS) - 1)])
                attempt += 1
                continue
            self._conn = conn
            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                # Entries from before this connection may have missed notifications: start empty.
                self._drop_all()
                self._listening = True
                attempt = 0
                await lost.wait()
                log.warning("auth_cache.listener_lost", reading="postgres")
            except Exception as e:
                log.warning("auth_cache.listener_failed", error=f"{type(e).__name__}: {e}")
            finally:
                self._drop_all()
                self._conn = None
                with contextlib.suppress(Exception):
                    conn.terminate()
            await asyncio.sleep(_RETRY_SECONDS[0])


def _checked_now(entry: _Entry) -> accounts.KeyCheck:
    """The entry's check, with the key's expiry judged at this instant."""
    check = entry.check
    if check.usable and entry.expires_at is not None and entry.expires_at <= datetime.now(UTC):
        return accounts.KeyCheck(check.account, check.key_id, usable=False, why=accounts.EXPIRED)
    return check
