"""Money operations. Each is one SQL function call: one round trip, one transaction, idempotent.

The semantics are two-phase transfers (TigerBeetle's pending → post | void) and card authorisation/capture:
a hold freezes credits (``held`` grows, ``balance`` does not move); settling captures some or all of it
(``balance`` falls) and releases the rest.

Credits and transfers log one JSON line each (``money.credit``, ``money.transfer``) once committed; a repeat of
an idempotent request logs the first entry's id again. Task holds are reported by :mod:`shared.ledger.reports`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from shared.ledger.accounts import Conn
from shared.ledger.sqlerrors import mapped

log = structlog.get_logger("creditq.shared.ledger")

CREDIT_KINDS = ("grant", "purchase", "subscription", "adjustment")


async def credit(
    conn: Conn,
    account_id: str,
    amount: int,
    reason: str | None,
    key: str | None,
    kind: str | None = None,
    event_id: str | None = None,
    expires_at: datetime | None = None,
) -> asyncpg.Record:
    """Add (amount > 0, kind ``grant`` by default) or remove (amount < 0, kind ``adjustment``) credits.

    A positive amount is a new lot that expires at ``expires_at`` (None: never); a negative one spends the
    account's lots after its held part, soonest expiry first. One SQL call (``cq_credit``), one transaction.
    Idempotent by ``key``: a repeat returns the first entry. Raises InsufficientCredits if a negative amount would
    take available below 0, IdempotencyConflict if the key was used with another amount, NotFound, InvalidInput
    (amount 0, or an expiry on a negative amount).
    """
    kind = kind or ("grant" if amount > 0 else "adjustment")
    assert kind in CREDIT_KINDS
    async with mapped():
        r = await conn.fetchrow(
            "SELECT * FROM cq_credit($1, $2, $3, $4, $5, $6, $7)",
            account_id,
            kind,
            amount,
            reason,
            key,
            event_id,
            expires_at,
        )
    assert r is not None
    log.info(
        "money.credit",
        account_id=account_id,
        money="credit",
        kind=kind,
        amount=amount,
        entry_id=r["id"],
        balance_after=r["balance_after"],
        event_id=event_id,
    )
    return r


async def hold(conn: Conn, account_id: str, hold_id: str, amount: int, task_id: str | None = None) -> asyncpg.Record:
    """Freeze ``amount`` credits under ``hold_id``; returns the ``hold`` entry.

    Idempotent by ``hold_id``. Raises InsufficientCredits (available < amount), Forbidden (suspended account),
    NotFound, InvalidInput (amount ≤ 0).
    """
    async with mapped():
        r = await conn.fetchrow("SELECT * FROM cq_hold($1, $2, $3, $4)", account_id, hold_id, task_id, amount)
    assert r is not None
    return r


async def capture(conn: Conn, hold_id: str, amount: int | None = None) -> asyncpg.Record:
    """Capture ``amount`` (default: all) of an open hold and release the rest; returns the hold row.

    Idempotent: a hold settled before is returned unchanged (its first outcome). Raises NotFound, InvalidInput
    (amount outside 1..hold).
    """
    async with mapped():
        if amount is None:
            r = await conn.fetchrow(
                "SELECT * FROM cq_settle_hold($1, (SELECT amount FROM holds WHERE id = $1))", hold_id
            )
        else:
            r = await conn.fetchrow("SELECT * FROM cq_settle_hold($1, $2)", hold_id, amount)
    assert r is not None
    return r


async def release(conn: Conn, hold_id: str) -> asyncpg.Record:
    """Release an open hold in full; returns the hold row. Idempotent like :func:`capture`. Raises NotFound."""
    async with mapped():
        r = await conn.fetchrow("SELECT * FROM cq_settle_hold($1, 0)", hold_id)
    assert r is not None
    return r


async def transfer(
    conn: Conn,
    from_id: str,
    to_id: str,
    amount: int,
    memo: str | None,
    key: str | None,
    request_hash: str | None = None,
) -> asyncpg.Record:
    """Move ``amount`` credits from one account to another (``to_id``: its accountId or externalId); returns the
    transfer row. One SQL call (``cq_transfer``), one transaction.

    The sender's own checks come first (Forbidden: suspended; InsufficientCredits: amount > available), and only
    then NotFound for an unknown recipient, whatever the amount: a sender who cannot pay learns nothing about
    the recipient. The sender's lots are spent after its held part, soonest expiry first; the recipient gets
    ``transfer_in`` lots with the same expiries. Both rows are locked in id order, so opposite transfers cannot
    deadlock. Idempotent by (from, key); the same key with another ``request_hash`` raises IdempotencyConflict.
    Raises InvalidInput (amount ≤ 0, to oneself).
    """
    async with mapped():
        r = await conn.fetchrow(
            "SELECT * FROM cq_transfer($1, $2, $3, $4, $5, $6)",
            from_id,
            to_id,
            amount,
            memo,
            key,
            request_hash,
        )
    assert r is not None
    log.info(
        "money.transfer", account_id=from_id, to_account_id=to_id, money="transfer", amount=amount, transfer_id=r["id"]
    )
    return r


def transfer_view(r: asyncpg.Record) -> dict[str, Any]:
    """A transfer as the API shows it."""
    return {
        "transferId": r["id"],
        "fromAccountId": r["from_account_id"],
        "toAccountId": r["to_account_id"],
        "amount": r["amount"],
        "memo": r["memo"],
        "createdAt": r["created_at"].isoformat(),
    }


# --- Lots -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lot:
    """Credits that came in together: ``granted`` at first, ``remaining`` now, spent soonest-expiry first."""

    id: str
    kind: str
    granted: int
    remaining: int
    expires_at: datetime | None
    created_at: datetime

    def view(self) -> dict[str, Any]:
        """The lot as ``GET /v1/account/lots`` shows it."""
        return {
            "lotId": self.id,
            "kind": self.kind,
            "granted": self.granted,
            "remaining": self.remaining,
            "expiresAt": self.expires_at.isoformat() if self.expires_at else None,
            "createdAt": self.created_at.isoformat(),
        }


async def lots(conn: Conn, account_id: str, include_spent: bool = False) -> list[Lot]:
    """The account's lots in the order they are spent (soonest expiry first, never-expiring last, then oldest);
    those with nothing left only with ``include_spent``. Read-only."""
    rows = await conn.fetch(
        "SELECT id, kind, granted, remaining, expires_at, created_at FROM lots "
        "WHERE account_id = $1 AND ($2 OR remaining > 0) ORDER BY expires_at NULLS LAST, created_at, id",
        account_id,
        include_spent,
    )
    return [Lot(r["id"], r["kind"], r["granted"], r["remaining"], r["expires_at"], r["created_at"]) for r in rows]


async def expiring_next(conn: Conn, account_id: str) -> dict[str, Any] | None:
    """``{"credits", "expiresAt"}``: the unspent credits of the account's lots that expire soonest (all lots
    with that expiry), or None when nothing is set to expire. Read-only; one indexed query."""
    r = await conn.fetchrow(
        "SELECT expires_at, sum(remaining)::bigint AS credits FROM lots "
        "WHERE account_id = $1 AND remaining > 0 AND expires_at IS NOT NULL "
        "GROUP BY expires_at ORDER BY expires_at LIMIT 1",
        account_id,
    )
    if r is None:
        return None
    return {"credits": r["credits"], "expiresAt": r["expires_at"].isoformat()}


async def expire_lots(conn: Conn, limit: int = 500) -> int:
    """Expire what is due: for up to ``limit`` accounts with a lot past its expiry, the part of those lots
    beyond the account's held credits leaves the balance, one ``expiration`` entry (``lotId`` set) per lot.
    Credits held for a live task are never taken: they expire at the first call after their hold is released
    (or are spent by its capture). One SQL call (``cq_expire_lots``), one transaction; idempotent (a second
    call finds nothing more). Returns the number of entries written. Raises what the connection raises."""
    n = int(await conn.fetchval("SELECT cq_expire_lots($1)", limit))
    if n:
        log.info("money.expire", money="expire", entries=n)
    return n
