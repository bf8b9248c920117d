"""Client webhooks in Postgres: the accounts' signing secrets and the delivery outbox.

The outbox rows are written by the trigger ``tasks_events`` (migration 008) in the transaction that ends a task;
nothing here creates one. A delivery is attempted under a claim (:func:`claim`), so two workers never send the
same attempt at once, and a worker that dies mid-attempt only delays the next one until its lease lapses.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.errors import NotFound
from shared.ledger.accounts import Conn
from shared.ledger.sqlerrors import mapped

ROTATION_GRACE_SECONDS = 24 * 3600.0


async def secrets(conn: Conn, account_id: str, new_secret: str) -> list[asyncpg.Record]:
    """The account's signing secrets that still sign, newest (the current one) first; ``new_secret`` becomes the
    first one if the account has none. Idempotent, one round trip. Raises NotFound (no account)."""
    async with mapped():
        return list(await conn.fetch("SELECT * FROM cq_webhook_secrets($1, $2)", account_id, new_secret))


async def rotate(
    conn: Conn, account_id: str, new_secret: str, grace: float = ROTATION_GRACE_SECONDS
) -> list[asyncpg.Record]:
    """Make ``new_secret`` the current one; the previous current one keeps signing for ``grace`` seconds. One
    transaction. Not idempotent (each call rotates). Raises NotFound (no account)."""
    async with mapped():
        return list(
            await conn.fetch("SELECT * FROM cq_rotate_webhook_secret($1, $2, $3)", account_id, new_secret, grace)
        )


async def signing_secrets(conn: Conn, account_id: str) -> list[str]:
    """The secrets that sign the account's webhooks now (none before its first ``GET webhook-secret``)."""
    rows = await conn.fetch(
        "SELECT secret FROM webhook_secrets WHERE account_id = $1 AND (expires_at IS NULL OR expires_at > now()) "
        "ORDER BY id DESC",
        account_id,
    )
    return [r["secret"] for r in rows]


async def for_task(conn: Conn, task_id: str, account_id: str | None = None) -> list[asyncpg.Record]:
    """The task's deliveries, oldest first; with ``account_id``, only if the task is that account's. Raises
    NotFound (no such task for that account)."""
    rows = await conn.fetch(
        "SELECT t.id AS task, d.* FROM tasks t LEFT JOIN webhook_deliveries d ON d.task_id = t.id "
        "WHERE t.id = $1 AND ($2::text IS NULL OR t.account_id = $2) ORDER BY d.created_at, d.id",
        task_id,
        account_id,
    )
    if not rows:
        raise NotFound(f"no task {task_id!r}")
    return [r for r in rows if r["id"] is not None]


async def pending_for_task(conn: Conn, task_id: str) -> list[str]:
    """The ids of the task's pending deliveries."""
    rows = await conn.fetch("SELECT id FROM webhook_deliveries WHERE task_id = $1 AND status = 'pending'", task_id)
    return [r["id"] for r in rows]


async def get(conn: Conn, webhook_id: str) -> asyncpg.Record | None:
    """One delivery, or None."""
    return await conn.fetchrow("SELECT * FROM webhook_deliveries WHERE id = $1", webhook_id)


async def claim(conn: Conn, webhook_id: str, lease: float, early: float = 1.0) -> asyncpg.Record | None:
    """Claim the delivery for one attempt (counted in ``attempts``) for ``lease`` seconds, if it is pending and
    due (within ``early`` seconds) and no other attempt holds it; else None."""
    r = await conn.fetchrow("SELECT * FROM cq_claim_delivery($1, $2, $3)", webhook_id, lease, early)
    return r if r is not None and r["id"] is not None else None


async def record(
    conn: Conn, webhook_id: str, outcome: str, status_code: int | None, error: str | None, retry_in: float = 0.0
) -> asyncpg.Record:
    """Record an attempt: ``outcome`` ``delivered``, ``failed`` (for good) or ``pending`` (again in
    ``retry_in`` seconds). Releases the claim."""
    assert outcome in ("delivered", "failed", "pending")
    r = await conn.fetchrow(
        "SELECT * FROM cq_record_delivery($1, $2, $3, $4, $5)", webhook_id, outcome, status_code, error, retry_in
    )
    assert r is not None
    return r


async def retry_now(conn: Conn, task_id: str, account_id: str, webhook_id: str) -> asyncpg.Record:
    """Make the delivery pending and due now (a client's retry). Raises NotFound (not this account's task or
    no such delivery of it)."""
    r = await conn.fetchrow("SELECT * FROM cq_retry_delivery($1, $2, $3)", task_id, account_id, webhook_id)
    if r is None or r["id"] is None:
        raise NotFound(f"no delivery {webhook_id!r} of task {task_id!r}")
    return r


async def overdue(conn: Conn, grace_seconds: float, limit: int = 5000) -> list[tuple[str, int]]:
    """(id, attempts) of the pending deliveries due more than ``grace_seconds`` ago and not held by an attempt:
    their queue entry may be lost (a flushed Redis, a dead worker). Oldest first."""
    rows = await conn.fetch(
        "SELECT id, attempts FROM webhook_deliveries WHERE status = 'pending' "
        "AND next_attempt_at < now() - make_interval(secs => $1) "
        "AND (locked_until IS NULL OR locked_until < now()) ORDER BY next_attempt_at LIMIT $2",
        grace_seconds,
        limit,
    )
    return [(r["id"], int(r["attempts"])) for r in rows]


def delivery_view(r: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """A delivery as the API shows it."""
    return {
        "webhookId": r["id"],
        "type": r["type"],
        "status": r["status"],
        "attempts": r["attempts"],
        "lastStatusCode": r["last_status_code"],
        "lastError": r["last_error"],
        "nextAttemptAt": r["next_attempt_at"].isoformat() if r["next_attempt_at"] else None,
        "createdAt": r["created_at"].isoformat(),
        "deliveredAt": r["delivered_at"].isoformat() if r["delivered_at"] else None,
    }
