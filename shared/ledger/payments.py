"""Payment events: store each one durably, then apply it exactly once, in one transaction with its entry.

The flow (the webhook route, the admin re-apply and ``creditq audit --fix`` all use it):

1. :func:`store_event` inserts the event, keyed by its id, before anything else happens to it. Types
   creditq does not act on are stored as ``ignored``; the rest as ``pending``. A repeat of an id returns the
   stored row (the first payload is kept: it is the record of what was received).
2. :func:`apply_event` reads what the event asks for (:func:`shared.payment_events.interpret`, pure
   Python, because it needs the price list and knows Stripe's shapes), then calls the SQL function
   ``cq_apply_payment_event`` (migrations/007_money_over_time.sql): one round trip, one transaction that
   locks the event row, finds the account (or the purchase a refund names), writes the ledger entry (and the
   subscription period, the tier, the purchase record) and marks the event ``applied`` (or ``ignored`` when
   it is not creditq's). An event that is creditq's but cannot be applied yet stays ``pending`` with a
   ``detail`` saying why; ``creditq audit`` reports it as ``unapplied_event`` until it applies or an operator
   dismisses it (:func:`dismiss_event`).

Exactly once, even for 20 concurrent deliveries of one event: the row lock on ``payment_events`` serialises
them, and the losers find the event applied. Behind it, for different event ids: the entry's idempotency key
``evt:<event id>``, the ``subscription_periods`` primary key (one allocation per account, subscription and
service period), the purchase row lock and the refund and dispute ids. Nothing here writes a balance except
through the SQL money functions.

What each event type does is in :mod:`shared.payment_events` (and docs/API.md, "Payment events").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import structlog

from shared.errors import Conflict, InvalidInput, NotFound
from shared.ledger import cursors
from shared.ledger.audit import Fixer, Problem
from shared.ledger.sqlerrors import mapped
from shared.payment_events import initial_status, interpret
from shared.pricing import Pricing

log = structlog.get_logger("creditq.shared.ledger")

# A connection, or a pool for one statement on any of its connections. (Declared here as an explicit alias:
# asyncpg is untyped, and mypy rejects an implicit alias of two Any types.)
Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"

STATUSES = ("pending", "applied", "ignored", "dismissed")
MAX_DISMISS_REASON_LENGTH = 500


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A row of ``payment_events``. ``inserted`` is True when the call that returned it stored it."""

    id: str
    type: str
    status: str
    payload: dict[str, Any]
    account_id: str | None
    detail: str | None
    attempts: int
    received_at: datetime
    applied_at: datetime | None
    inserted: bool = False
    dismissed_at: datetime | None = None
    dismissed_reason: str | None = None

    @classmethod
    def from_record(cls, r: asyncpg.Record, inserted: bool = False) -> StoredEvent:
        return cls(
            r["id"],
            r["type"],
            r["status"],
            r["payload"],
            r["account_id"],
            r["detail"],
            r["attempts"],
            r["received_at"],
            r["applied_at"],
            inserted,
            r["dismissed_at"],
            r["dismissed_reason"],
        )

    def view(self) -> dict[str, Any]:
        """The event as the admin API shows it (camelCase, without the payload)."""
        return {
            "eventId": self.id,
            "type": self.type,
            "status": self.status,
            "accountId": self.account_id,
            "detail": self.detail,
            "attempts": self.attempts,
            "receivedAt": self.received_at.isoformat(),
            "appliedAt": self.applied_at.isoformat() if self.applied_at else None,
            **(
                {"dismissedAt": self.dismissed_at.isoformat(), "dismissedReason": self.dismissed_reason}
                if self.dismissed_at
                else {}
            ),
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one :func:`apply_event` call.

    ``status`` is the event's status after the call; ``applied`` is True only when this call applied it (False
    for a repeat of an applied or ignored event, and for one still pending). ``credited`` is what this call
    added (0 for a repeat, or for a second event of an already allocated subscription period).
    """

    event_id: str
    type: str
    status: str
    applied: bool
    account_id: str | None
    credited: int
    entry_id: int | None
    detail: str | None
    attempts: int

    def view(self) -> dict[str, Any]:
        """The outcome as the API answers it."""
        out: dict[str, Any] = {
            "ok": self.status != "pending",
            "eventId": self.event_id,
            "type": self.type,
            "status": self.status,
            "applied": self.applied,
            "credited": self.credited,
            "attempts": self.attempts,
        }
        if self.status == "ignored":
            out["ignored"] = True
        if self.account_id is not None:
            out["accountId"] = self.account_id
        if self.detail is not None:
            out["detail"] = self.detail
        return out


# --- Storing and applying -----------------------------------------------------------------------------------

_STORE = """
WITH ins AS (
    INSERT INTO payment_events (id, type, payload, status, detail, attempts)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (id) DO NOTHING
    RETURNING *, true AS inserted
)
SELECT * FROM ins
UNION ALL
SELECT *, false FROM payment_events WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM ins)
"""


async def store_event(conn: Conn, event_id: str, event_type: str, event: dict[str, Any]) -> StoredEvent:
    """Store a received event durably (its own statement, committed before any apply), keyed by ``event_id``.

    Idempotent: a repeat returns the row already stored (``inserted`` False, first payload kept). A new event
    is stored ``ignored`` when creditq does not act on it, else ``pending`` with 0 attempts. Raises
    InvalidInput when Postgres cannot store the JSON (a ``\\u0000`` in a string), Unavailable via the
    caller's pool.
    """
    status, detail = initial_status(event_type, event)
    attempts = 1 if status == "ignored" else 0
    # A concurrent first insert of the same id makes ours wait and then do nothing, but this statement's
    # snapshot predates that insert, so neither branch returns a row; the next try sees it.
    for _ in range(3):
        try:
            r = await conn.fetchrow(_STORE, event_id, event_type, event, status, detail, attempts)
        except asyncpg.exceptions.UntranslatableCharacterError:
            raise InvalidInput(
                "the event cannot be stored: it contains a \\u0000 character",
                details=[{"field": "payload", "message": "\\u0000 is not storable"}],
            ) from None
        if r is not None:
            stored = StoredEvent.from_record(r, inserted=r["inserted"])
            if not stored.inserted and stored.payload != event:
                # Senders resend an event unchanged; a different body under the same id is worth a look.
                log.warning("payment_event.resent_changed", event_id=event_id)
            return stored
    raise AssertionError(f"payment event {event_id} neither inserted nor found")


async def get_event(conn: Conn, event_id: str) -> StoredEvent:
    """The stored event. Read-only. Raises NotFound."""
    r = await conn.fetchrow("SELECT *, false AS inserted FROM payment_events WHERE id = $1", event_id)
    if r is None:
        raise NotFound(f"no payment event {event_id!r}")
    return StoredEvent.from_record(r)


async def apply_event(conn: Conn, pricing: Pricing, event_id: str, stored: StoredEvent | None = None) -> Outcome:
    """Apply a stored event if it is pending: one SQL function call, so one transaction (the caller's, if
    ``conn`` is inside one) holding the event's row lock and everything it moves.

    Idempotent and safe concurrently: an applied, ignored or dismissed event is returned as it is (``applied``
    False), and of concurrent calls for one event exactly one applies it. An event that still cannot be applied
    stays pending (``status`` ``pending``, ``detail`` why, attempts + 1); this is an outcome, not an error:
    callers that must refuse raise UnappliedEvent. ``stored`` (the row :func:`store_event` just returned) saves
    reading it again. Raises NotFound for an event never stored; IdempotencyConflict if ``evt:<id>`` was
    already used as an idempotency key with another amount (by hand, through the admin credits API).
    """
    event = stored if stored is not None else await get_event(conn, event_id)
    if event.status != "pending":
        return _outcome(event, applied=False, credited=0, entry_id=None)
    i = interpret(pricing, event.type, event.payload)
    async with mapped():
        r = await conn.fetchrow(
            "SELECT (x.event).*, x.applied, x.entry_id, x.credited "
            "FROM cq_apply_payment_event($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, "
            "$17, $18, $19) x",
            event_id,
            i.kind,
            i.account_id,
            i.external_id,
            i.credits,
            i.tier,
            i.period_start,
            i.reason,
            i.detail,
            i.subscription,
            i.period_end,
            i.expires_at,
            i.ref,
            i.ref2,
            i.money,
            i.currency,
            i.cumulative,
            i.dispute_status,
            i.created,
        )
    assert r is not None
    outcome = _outcome(StoredEvent.from_record(r), applied=r["applied"], credited=r["credited"], entry_id=r["entry_id"])
    if outcome.status == "pending":
        log.warning(
            "payment_event.not_applied",
            event_id=event_id,
            event_type=event.type,
            account_id=outcome.account_id,
            detail=outcome.detail,
            attempts=outcome.attempts,
        )
    elif outcome.applied:
        log.info(
            "payment_event.applied",
            event_id=event_id,
            event_type=event.type,
            account_id=outcome.account_id,
            credited=outcome.credited,
            detail=outcome.detail,
        )
    return outcome


async def dismiss_event(conn: Conn, event_id: str, reason: str) -> StoredEvent:
    """Dismiss a pending event that can never apply: it is kept, marked ``dismissed`` with ``reason`` and the
    time, and the audit no longer reports it. One SQL function call (``cq_dismiss_payment_event``), holding the
    event's row lock, so it cannot race an apply. Idempotent: dismissing a dismissed event returns it as it is.
    Raises InvalidInput (empty or over-long reason), NotFound (unknown event), Conflict (applied or ignored:
    only a pending event may be dismissed)."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_DISMISS_REASON_LENGTH:
        raise InvalidInput(
            f"reason must be 1 to {MAX_DISMISS_REASON_LENGTH} characters",
            details=[{"field": "reason", "message": f"1 to {MAX_DISMISS_REASON_LENGTH} characters"}],
        )
    async with mapped():
        r = await conn.fetchrow("SELECT *, false AS inserted FROM cq_dismiss_payment_event($1, $2)", event_id, reason)
    assert r is not None
    event = StoredEvent.from_record(r)
    if event.status != "dismissed":
        raise Conflict(f"payment event {event_id} is {event.status}: only a pending event can be dismissed")
    log.info("payment_event.dismissed", event_id=event_id, reason=event.dismissed_reason)
    return event


def _outcome(event: StoredEvent, applied: bool, credited: int, entry_id: int | None) -> Outcome:
    return Outcome(
        event.id,
        event.type,
        event.status,
        applied,
        event.account_id,
        credited,
        entry_id,
        event.detail,
        event.attempts,
    )


async def list_events(
    conn: Conn, status: str | None, limit: int, cursor: str | None = None, event_type: str | None = None
) -> tuple[list[StoredEvent], str | None]:
    """One page of stored events, newest first, optionally of one status and/or one type (``invoice.payment_failed``
    shows failed payments); and the next page's cursor (None at the end). Read-only. Raises InvalidInput for an
    unknown status or a cursor this service did not make."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", details=[{"field": "status"}])
    before_at, before_id = cursors.keyset_after(cursor)
    rows = await conn.fetch(
        "SELECT *, false AS inserted FROM payment_events "
        "WHERE ($1::text IS NULL OR status = $1) "
        "AND ($2::timestamptz IS NULL OR (received_at, id) < ($2, $3)) "
        "AND ($5::text IS NULL OR type = $5) "
        "ORDER BY received_at DESC, id DESC LIMIT $4",
        status,
        before_at,
        before_id,
        limit + 1,
        event_type,
    )
    events = [StoredEvent.from_record(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = events[-1]
        next_cursor = cursors.encode_keyset(last.received_at, last.id)
    return events, next_cursor


async def reapply_pending(pool: asyncpg.Pool, pricing: Pricing) -> list[str]:
    """Try every pending event again, oldest first (each in its own transaction, through :func:`apply_event`);
    return the ids applied now. Idempotent; safe beside live webhook deliveries (the row lock decides). Raises
    Unavailable if Postgres goes away."""
    ids = [
        r["id"]
        for r in await pool.fetch("SELECT id FROM payment_events WHERE status = 'pending' ORDER BY received_at, id")
    ]
    applied: list[str] = []
    for event_id in ids:
        outcome = await apply_event(pool, pricing, event_id)
        if outcome.applied:
            applied.append(event_id)
    return applied


def fixers(pricing: Pricing) -> dict[str, Fixer]:
    """The audit's repairs owned by payments: ``unapplied_event`` → re-apply the stored event through
    :func:`apply_event` (the webhook's own path; it never writes a balance directly). Each repair returns what
    it did, or None when the event still cannot be applied (it stays reported)."""

    async def reapply(pool: asyncpg.Pool, problem: Problem) -> str | None:
        if problem.eventId is None:
            return None
        try:
            outcome = await apply_event(pool, pricing, problem.eventId)
        except NotFound:
            return None  # gone since the check: nothing to repair
        if not outcome.applied:
            return None
        return (
            f"applied payment event {outcome.event_id} ({outcome.type}): {outcome.credited} credits to "
            f"{outcome.account_id}"
        )

    return {"unapplied_event": reapply}
