"""Accounts, API keys and account statements."""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from shared.errors import Conflict, InvalidInput, NotFound
from shared.ledger import cursors
from shared.ledger.sqlerrors import mapped

# An asyncpg Connection or Pool: both have fetch/fetchrow/fetchval/execute. asyncpg ships no types, so Any.
Conn: TypeAlias = Any

KEY_PREFIX = "cq_"


def new_api_key() -> str:
    """A fresh random API key (shown once; only its hash is stored)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    """The stored form of an API key: SHA-256 of it. Keys are 256-bit random, so no salt or slow hash is needed."""
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    external_id: str | None
    tier: str
    status: str
    balance: int
    held: int
    created_at: datetime

    @property
    def available(self) -> int:
        return self.balance - self.held

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> Account:
        return cls(r["id"], r["external_id"], r["tier"], r["status"], r["balance"], r["held"], r["created_at"])


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """What an API key resolves to. ``usable`` is False for a revoked or expired key."""

    account: Account
    key_id: str
    usable: bool
    why: str


async def create_account(
    conn: Conn,
    tier: str = "free",
    credits: int = 0,
    external_id: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[Account, str, str]:
    """Create an account with an API key and, if ``credits`` > 0, an opening ``grant``; one transaction.

    Returns (account, key_id, api_key). Raises Conflict if ``external_id`` is taken, InvalidInput on credits < 0.
    """
    if credits < 0:
        raise InvalidInput("credits must be ≥ 0", details=[{"field": "credits", "message": "must be ≥ 0"}])
    key = new_api_key()
    if external_id is not None:
        external_id = unicodedata.normalize("NFC", external_id)
    try:
        async with mapped():
            r = await conn.fetchrow(
                """
                WITH a AS (
                    INSERT INTO accounts (id, external_id, tier) VALUES (cq_new_id('acct'), $1, $2) RETURNING id
                ), k AS (
                    INSERT INTO api_keys (id, account_id, key_hash, expires_at)
                    SELECT cq_new_id('key'), a.id, $3, $5 FROM a RETURNING id
                ), g AS (
                    SELECT cq_credit(a.id, 'grant', $4, 'opening balance', NULL) FROM a WHERE $4 > 0
                )
                SELECT a.id, k.id AS key_id, (SELECT count(*) FROM g) AS granted FROM a, k
                """,
                external_id,
                tier,
                hash_key(key),
                credits,
                expires_at,
            )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"externalId {external_id!r} is taken") from None
    assert r is not None
    account = await get_account(conn, r["id"])
    return account, r["key_id"], key


async def get_account(conn: Conn, ref: str) -> Account:
    """The account by id or externalId (NFC-normalised first, as externalIds are stored). Raises NotFound."""
    ref = unicodedata.normalize("NFC", ref)
    r = await conn.fetchrow(
        "SELECT * FROM accounts WHERE id = $1 UNION ALL "
        "SELECT * FROM accounts WHERE external_id = $1 AND id <> $1 LIMIT 1",
        ref,
    )
    if r is None:
        raise NotFound(f"no account {ref!r}")
    return Account.from_record(r)


async def update_account(conn: Conn, ref: str, tier: str | None = None, status: str | None = None) -> Account:
    """Set an account's tier and/or status. Raises NotFound, InvalidInput (bad status)."""
    if status is not None and status not in ("active", "suspended"):
        raise InvalidInput("status must be active or suspended", details=[{"field": "status"}])
    account = await get_account(conn, ref)
    r = await conn.fetchrow(
        "UPDATE accounts SET tier = coalesce($2, tier), status = coalesce($3, status), updated_at = now() "
        "WHERE id = $1 RETURNING *",
        account.id,
        tier,
        status,
    )
    assert r is not None
    return Account.from_record(r)


async def create_key(conn: Conn, ref: str, expires_at: datetime | None = None) -> tuple[str, str]:
    """A new API key for the account: (key_id, api_key). Raises NotFound."""
    account = await get_account(conn, ref)
    key = new_api_key()
    key_id = await conn.fetchval(
        "INSERT INTO api_keys (id, account_id, key_hash, expires_at) VALUES (cq_new_id('key'), $1, $2, $3) "
        "RETURNING id",
        account.id,
        hash_key(key),
        expires_at,
    )
    return str(key_id), key


async def revoke_key(conn: Conn, key_id: str) -> str:
    """Revoke a key (idempotent: a revoked key stays revoked at its first time); returns its account id. Raises
    NotFound."""
    account_id = await conn.fetchval(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING account_id", key_id
    )
    if account_id is None:
        raise NotFound(f"no key {key_id!r}")
    return str(account_id)


async def ping(conn: Conn) -> None:
    """One round trip to Postgres, for readiness checks. Raises what the connection raises."""
    await conn.fetchval("SELECT 1")


REVOKED = "this API key was revoked"
EXPIRED = "this API key has expired"


async def authenticate(conn: Conn, key: str) -> KeyCheck | None:
    """Resolve an API key; None when unknown. One indexed lookup on the key's hash."""
    found = await authenticate_hashed(conn, hash_key(key))
    return None if found is None else found[0]


async def authenticate_hashed(conn: Conn, key_hash: bytes) -> tuple[KeyCheck, datetime | None] | None:
    """Resolve an API key by its hash (:func:`hash_key`): what it resolves to now and the key's expiry (None:
    never), or None when unknown. One indexed lookup; reads only."""
    r = await conn.fetchrow(
        "SELECT a.*, k.id AS key_id, k.revoked_at, k.expires_at, now() AS now "
        "FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.key_hash = $1",
        key_hash,
    )
    if r is None:
        return None
    why = ""
    if r["revoked_at"] is not None:
        why = REVOKED
    elif r["expires_at"] is not None and r["expires_at"] <= r["now"]:
        why = EXPIRED
    return KeyCheck(Account.from_record(r), r["key_id"], usable=not why, why=why), r["expires_at"]


def entry_view(r: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """A ledger entry as the API shows it (camelCase)."""
    view: dict[str, Any] = {
        "id": str(r["id"]),
        "kind": r["kind"],
        "amount": r["amount"],
        "heldDelta": r["held_delta"],
        "balanceBefore": r["balance_before"],
        "balanceAfter": r["balance_after"],
        "heldAfter": r["held_after"],
        "createdAt": r["created_at"].isoformat(),
    }
    if r["task_id"] is not None:
        view["taskId"] = r["task_id"]
    if r["reason"] is not None:
        view["reason"] = r["reason"]
    if r["transfer_id"] is not None:
        view["transferId"] = r["transfer_id"]
    if r.get("lot_id") is not None:
        view["lotId"] = r["lot_id"]
    return view


async def list_entries(
    conn: Conn, account_id: str, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the account's entries, newest first, and the cursor of the next page (None at the end)."""
    before = cursors.decode_id(cursor) if cursor else cursors.MAX_ID
    rows = await conn.fetch(
        "SELECT * FROM ledger_entries WHERE account_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        account_id,
        before,
        limit + 1,
    )
    items = [entry_view(r) for r in rows[:limit]]
    next_cursor = cursors.encode_id(rows[limit - 1]["id"]) if len(rows) > limit else None
    return items, next_cursor
