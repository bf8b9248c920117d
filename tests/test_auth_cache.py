"""The API's key cache (api.authcache): two real API processes on one database; a change made through one of them
(or behind both, in SQL) is seen by the other's next requests within the bound, although the cache's TTL is a
minute here: it is Postgres's notification that does it. And the cache really serves: with the notifying
trigger disabled, a change stays unseen (until the TTL)."""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg
import httpx

from tests.apiserver import ADMIN, bearer, job
from tests.conftest import Processes

TTL = "60"
# How soon the other process must see a change: Postgres's notification takes milliseconds; this leaves room
# for a loaded machine and is still far below the TTL.
BOUND_SECONDS = 2.0


def _until(check: Callable[[], bool]) -> float:
    """Seconds until ``check()`` holds (polled); fails past the bound."""
    started = time.monotonic()
    while not check():
        elapsed = time.monotonic() - started
        assert elapsed < BOUND_SECONDS, f"not seen after {elapsed:.2f} s"
        time.sleep(0.01)
    return time.monotonic() - started


def _api(procs: Processes) -> str:
    return procs.api(env={"CREDITQ_AUTH_CACHE_SECONDS": TTL}).url


def _account(http: httpx.Client, a: str, tier: str = "free", credits: int = 1000) -> tuple[str, str, str]:
    r = http.post(f"{a}/v1/admin/accounts", json={"tier": tier, "credits": credits}, headers=ADMIN)
    assert r.status_code == 201, r.text
    body = r.json()
    return body["accountId"], body["keyId"], body["apiKey"]


def _warm(http: httpx.Client, b: str, key: str) -> None:
    """Requests through ``b`` until its listener is up and the key is cached (a fill needs the listener)."""
    for _ in range(20):
        assert http.get(f"{b}/v1/jobs", headers=bearer(key)).status_code == 200
        time.sleep(0.05)


def test_revoke_suspend_and_tier_change_reach_the_other_process(procs: Processes) -> None:
    a, b = _api(procs), _api(procs)
    with httpx.Client(timeout=30) as http:
        account_id, key_id, key = _account(http, a)
        _, other_key_id, other_key = _account(http, a)
        _warm(http, b, key)
        _warm(http, b, other_key)

        # A tier change: the free tier runs 2 jobs at once, pro 20.
        for _ in range(2):
            assert http.post(f"{b}/v1/jobs", json=job(), headers=bearer(key)).status_code == 202
        assert http.post(f"{b}/v1/jobs", json=job(), headers=bearer(key)).status_code == 429
        r = http.patch(f"{a}/v1/admin/accounts/{account_id}", json={"tier": "pro"}, headers=ADMIN)
        assert r.status_code == 200
        _until(lambda: http.post(f"{b}/v1/jobs", json=job(), headers=bearer(key)).status_code == 202)

        # A suspension stops writes (reads go on); resuming starts them again.
        assert http.patch(f"{a}/v1/admin/accounts/{account_id}", json={"status": "suspended"}, headers=ADMIN).is_success
        _until(lambda: http.post(f"{b}/v1/jobs", json=job(), headers=bearer(key)).status_code == 403)
        assert http.get(f"{b}/v1/jobs", headers=bearer(key)).status_code == 200
        assert http.patch(f"{a}/v1/admin/accounts/{account_id}", json={"status": "active"}, headers=ADMIN).is_success
        _until(lambda: http.post(f"{b}/v1/jobs", json=job(), headers=bearer(key)).status_code == 202)

        # A revoked key: 403 on every request; the account's other keys and other accounts are untouched.
        assert http.delete(f"{a}/v1/admin/keys/{key_id}", headers=ADMIN).status_code == 204
        _until(lambda: http.get(f"{b}/v1/jobs", headers=bearer(key)).status_code == 403)
        assert http.get(f"{b}/v1/jobs", headers=bearer(key)).json()["error"]["message"] == "this API key was revoked"
        assert http.get(f"{b}/v1/jobs", headers=bearer(other_key)).status_code == 200
        assert http.delete(f"{a}/v1/admin/keys/{other_key_id}", headers=ADMIN).status_code == 204
        _until(lambda: http.get(f"{b}/v1/jobs", headers=bearer(other_key)).status_code == 403)


async def test_a_change_in_sql_is_seen_and_the_cache_really_serves(procs: Processes, pool: asyncpg.Pool) -> None:
    """Any writer notifies (a payment event's SQL function, psql): here a plain UPDATE. A key's expiry is judged
    at each request. With the notifying trigger disabled a revocation stays unseen by a process that cached the
    key, which shows that requests are answered from the cache. (A suspension would not: the submit's SQL
    function refuses a suspended account whatever the cache says.)"""
    b = _api(procs)
    with httpx.Client(timeout=30) as http:
        account_id, key_id, key = _account(http, b)
        _warm(http, b, key)
        await pool.execute("UPDATE accounts SET status = 'suspended' WHERE id = $1", account_id)
        _until(lambda: http.post(f"{b}/v1/jobs", json=job(), headers=bearer(key)).status_code == 403)
        await pool.execute("UPDATE accounts SET status = 'active' WHERE id = $1", account_id)
        _until(lambda: http.post(f"{b}/v1/jobs", json=job(), headers=bearer(key)).status_code == 202)

        # An expiry set behind the cache's back (trigger on): seen; and an expiry reached while cached: seen at once.
        await pool.execute("UPDATE api_keys SET expires_at = now() + interval '1 second' WHERE id = $1", key_id)
        time.sleep(0.2)
        assert http.get(f"{b}/v1/jobs", headers=bearer(key)).status_code == 200  # cached again, expiry inside
        time.sleep(1.0)
        r = http.get(f"{b}/v1/jobs", headers=bearer(key))
        assert r.status_code == 403
        assert r.json()["error"]["message"] == "this API key has expired"

        _, other_key_id, other_key = _account(http, b)
        _warm(http, b, other_key)
        await pool.execute("ALTER TABLE api_keys DISABLE TRIGGER api_keys_auth_changed")
        try:
            await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", other_key_id)
            time.sleep(0.3)
            # Served from the cache: Postgres says revoked, the cached entry does not know.
            assert http.get(f"{b}/v1/jobs", headers=bearer(other_key)).status_code == 200
        finally:
            await pool.execute("ALTER TABLE api_keys ENABLE TRIGGER api_keys_auth_changed")


async def test_a_lost_listener_turns_the_cache_off_until_it_is_back(procs: Processes, pool: asyncpg.Pool) -> None:
    """The LISTEN connection is killed in Postgres and a change made while it is gone (its notification is
    lost): the process sees the change anyway, since it empties and bypasses the cache until it listens again."""
    b = _api(procs)
    with httpx.Client(timeout=30) as http:
        account_id, _, key = _account(http, b)
        _warm(http, b, key)
        async with pool.acquire() as conn:
            # Both at once, in one statement: the change commits while the listener is already gone.
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            )
            await conn.execute("UPDATE accounts SET status = 'suspended' WHERE id = $1", account_id)
        _until(lambda: http.post(f"{b}/v1/jobs", json=job(), headers=bearer(key)).status_code == 403)
