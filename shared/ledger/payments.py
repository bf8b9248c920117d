"""Payment events: store each one durably, then apply it exactly once, in one transaction with its entry.

The flow (the webhook route, the admin re-apply and ``creditq audit --fix`` all use it):

1. :func:`store_event` inserts the event, keyed by its id, before anything else happens to it. Types
   creditq does not act on are stored as ``ignored``; the rest as ``pending``. A repeat of an id returns the
   stored row (the first payload is kept: it is the record of what was received).
2. :func:`apply_event` reads what the event asks for (:func:`interpret`: Python, because it needs the price
   list), then calls the SQL function ``cq_apply_payment_event`` (migrations/002_payments.sql): one round
   trip, one transaction that locks the event row, finds the account, writes the ledger entry (and the
   subscription period and the tier) and marks the event ``applied``. An event that cannot be applied yet
   stays ``pending`` with a ``detail`` saying why; ``creditq audit`` reports it as ``unapplied_event``.

Exactly once, even for 20 concurrent deliveries of one event: the row lock on ``payment_events`` serialises
them, and the losers find the event applied. Behind it, the entry's idempotency key ``evt:<event id>`` and the
``subscription_periods`` primary key (one allocation per account and period, whatever the event id) hold on
their own. Nothing here writes a balance except through ``cq_credit``.

Event types acted on:
- ``checkout.session.completed`` (and ``checkout.session.async_payment_succeeded``): ``data.object.metadata``
  has ``accountId`` (or ``externalId``) and ``credits`` (a string, as Stripe sends metadata, of a positive
  whole number) → a ``purchase`` entry. A completed session whose ``payment_status`` is ``unpaid`` (a
  delayed payment method) is stored as ``ignored``: no money has arrived; its ``async_payment_succeeded``
  event credits it.
- ``invoice.paid``: ``data.object.metadata`` (or, as Stripe puts it for subscription invoices,
  ``subscription_details.metadata``) has ``accountId`` (or ``externalId``) and ``tier``, and
  ``data.object.period_start`` is a unix time → the tier's ``monthly_credits`` as a ``subscription`` entry,
  the account's tier set (only by the newest period), once per (account, period_start).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import structlog

from shared.errors import InvalidInput, NotFound
from shared.ledger.accounts import decode_keyset_cursor
from shared.ledger.audit import Fixer, Problem
from shared.ledger.sqlerrors import mapped
from shared.pricing import Pricing

log = structlog.get_logger()

# A connection, or a pool for one statement on any of its connections. (Declared here as an explicit alias:
# asyncpg is untyped, and mypy rejects an implicit alias of two Any types.)
Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"

PURCHASE_TYPES = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded"})
SUBSCRIPTION_TYPES = frozenset({"invoice.paid"})
HANDLED_TYPES = PURCHASE_TYPES | SUBSCRIPTION_TYPES
STATUSES = ("pending", "applied", "ignored")

# A purchase larger than this is a typo or an attack; it would also risk the bigint balance.
MAX_PURCHASE_CREDITS = 10**12
MAX_EVENT_ID_LENGTH = 255
MAX_WHOLE = 2**53 - 1
_DIGITS = re.compile(r"[0-9]{1,16}")  # ASCII only: str.isdigit() would accept "²" and friends
_NOT_YET = "received; not applied yet"


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
        }


@dataclass(frozen=True, slots=True)
class Intent:
    """What an event asks for. ``detail`` set: it cannot be applied, and why (it stays pending)."""

    kind: str  # purchase | subscription | ignore
    account_id: str | None = None
    external_id: str | None = None
    credits: int = 0
    tier: str | None = None
    period_start: int | None = None
    reason: str | None = None
    detail: str | None = None


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


# --- Reading an event ---------------------------------------------------------------------------------------


def event_identity(event: Mapping[str, Any]) -> tuple[str, str]:
    """(id, type) of a parsed event. Raises InvalidInput (422) when either is missing or not a string: such an
    event cannot be stored (it has no key), so the sender is told at once. Pure."""
    event_id, event_type = event.get("id"), event.get("type")
    details = []
    if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_EVENT_ID_LENGTH:
        details.append({"field": "id", "message": f"must be a string of 1 to {MAX_EVENT_ID_LENGTH} chars"})
    if not isinstance(event_type, str) or not event_type:
        details.append({"field": "type", "message": "must be a non-empty string"})
    if details:
        raise InvalidInput("the event needs a string id and type", details=details)
    assert isinstance(event_id, str)
    assert isinstance(event_type, str)
    return event_id, event_type


def _object(event: Mapping[str, Any]) -> dict[str, Any]:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else {}


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _metadata(obj: Mapping[str, Any]) -> dict[str, Any]:
    # Stripe copies a subscription's metadata onto its invoices under subscription_details (parent.* in newer
    # API versions), not into invoice.metadata; the invoice's own metadata wins where both say something.
    merged: dict[str, Any] = {}
    merged.update(_dict(_dict(_dict(obj.get("parent")).get("subscription_details")).get("metadata")))
    merged.update(_dict(_dict(obj.get("subscription_details")).get("metadata")))
    merged.update(_dict(obj.get("metadata")))
    return merged


def _whole(value: object) -> int | None:
    """A whole number in 0..MAX_WHOLE from an int or a string of ASCII digits (Stripe metadata are strings)."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        number = int(value.strip())
    # Bounded so that nothing reaching Postgres can overflow a bigint (that would be a 500, not a reason).
    return number if number is not None and 0 <= number <= MAX_WHOLE else None


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _account_ref(meta: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(accountId, externalId, problem)."""
    account_id, external_id = _text(meta.get("accountId")), _text(meta.get("externalId"))
    if account_id is None and external_id is None:
        return None, None, "metadata.accountId (or metadata.externalId) is missing"
    return account_id, external_id, None


def initial_status(event_type: str, event: Mapping[str, Any]) -> tuple[str, str | None]:
    """(status, detail) with which a new event is stored: ``ignored`` for what creditq does not act on, else
    ``pending`` (it is applied right after). Pure."""
    if event_type not in HANDLED_TYPES:
        return "ignored", f"event type {event_type} is not acted on"
    if event_type == "checkout.session.completed" and _object(event).get("payment_status") == "unpaid":
        return "ignored", (
            "payment_status is unpaid (a delayed payment method): "
            "checkout.session.async_payment_succeeded will credit it"
        )
    return "pending", _NOT_YET


def interpret(pricing: Pricing, event_type: str, event: Mapping[str, Any]) -> Intent:
    """What a handled event asks for, validated. Never raises: a problem is an Intent with ``detail`` set (the
    event stays pending with that reason). Pure."""
    status, why = initial_status(event_type, event)
    if status == "ignored":
        return Intent(kind="ignore", detail=why)
    obj = _object(event)
    meta = _metadata(obj)
    account_id, external_id, problem = _account_ref(meta)
    problems = [problem] if problem else []
    object_id = obj.get("id") if isinstance(obj.get("id"), str) else None

    if event_type in PURCHASE_TYPES:
        raw = meta.get("credits")
        credits = _whole(raw)
        if raw is None:
            problems.append("metadata.credits is missing")
        elif credits is None or not 0 < credits <= MAX_PURCHASE_CREDITS:
            problems.append(
                f"metadata.credits must be a whole number from 1 to {MAX_PURCHASE_CREDITS}, got {str(raw)[:40]!r}"
            )
        if problems:
            return Intent("purchase", account_id, external_id, detail="; ".join(problems))
        assert credits is not None
        return Intent(
            "purchase",
            account_id,
            external_id,
            credits=credits,
            reason=f"purchase: checkout {object_id}" if object_id else "purchase",
        )

    tier_name = _text(meta.get("tier"))
    tier = pricing.tiers.get(tier_name) if tier_name else None
    if tier_name is None:
        problems.append("metadata.tier is missing")
    elif tier is None:
        problems.append(f"unknown tier {tier_name[:40]!r} (have: {', '.join(pricing.tiers)})")
    period_start = _whole(obj.get("period_start"))
    if period_start is None:
        problems.append("data.object.period_start must be a unix time")
    if problems:
        return Intent("subscription", account_id, external_id, detail="; ".join(problems))
    assert tier is not None
    assert period_start is not None
    reason = f"subscription: {tier.name} for the period from {period_start}"
    if object_id:
        reason += f" (invoice {object_id})"
    return Intent(
        "subscription",
        account_id,
        external_id,
        credits=tier.monthly_credits,
        tier=tier.name,
        period_start=period_start,
        reason=reason,
    )


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
                log.warning("payment event resent with another payload; the first is kept", event_id=event_id)
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
    ``conn`` is inside one) holding the event's row lock, its ledger entry, its subscription period and tier.

    Idempotent and safe concurrently: an applied or ignored event is returned as it is (``applied`` False),
    and of concurrent calls for one event exactly one applies it. An event that still cannot be applied stays
    pending (``status`` ``pending``, ``detail`` why, attempts + 1); this is an outcome, not an error: callers
    that must refuse raise UnappliedEvent. ``stored`` (the row :func:`store_event` just returned) saves
    reading it again. Raises NotFound for an event never stored; IdempotencyConflict if ``evt:<id>`` was
    already used as an idempotency key with another amount (by hand, through the admin credits API).
    """
    event = stored if stored is not None else await get_event(conn, event_id)
    if event.status != "pending":
        return _outcome(event, applied=False, credited=0, entry_id=None)
    intent = interpret(pricing, event.type, event.payload)
    async with mapped():
        r = await conn.fetchrow(
            "SELECT (x.event).*, x.applied, x.entry_id, x.credited "
            "FROM cq_apply_payment_event($1, $2, $3, $4, $5, $6, $7, $8, $9) x",
            event_id,
            intent.kind,
            intent.account_id,
            intent.external_id,
            intent.credits,
            intent.tier,
            intent.period_start,
            intent.reason,
            intent.detail,
        )
    assert r is not None
    outcome = _outcome(StoredEvent.from_record(r), applied=r["applied"], credited=r["credited"], entry_id=r["entry_id"])
    if outcome.status == "pending":
        log.warning(
            "payment event not applied",
            event_id=event_id,
            event_type=event.type,
            account_id=outcome.account_id,
            detail=outcome.detail,
            attempts=outcome.attempts,
        )
    elif outcome.applied:
        log.info(
            "payment event applied",
            event_id=event_id,
            event_type=event.type,
            account_id=outcome.account_id,
            credited=outcome.credited,
            detail=outcome.detail,
        )
    return outcome


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
    conn: Conn, status: str | None, limit: int, cursor: str | None = None
) -> tuple[list[StoredEvent], str | None]:
    """One page of stored events, newest first, optionally of one status; and the next page's cursor (None at
    the end). Read-only. Raises InvalidInput for an unknown status or a cursor this service did not make."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", details=[{"field": "status"}])
    before_at: datetime | None = None
    before_id = ""
    if cursor:
        before_at, before_id = decode_keyset_cursor(cursor)
    rows = await conn.fetch(
        "SELECT *, false AS inserted FROM payment_events "
        "WHERE ($1::text IS NULL OR status = $1) "
        "AND ($2::timestamptz IS NULL OR (received_at, id) < ($2, $3)) "
        "ORDER BY received_at DESC, id DESC LIMIT $4",
        status,
        before_at,
        before_id,
        limit + 1,
    )
    events = [StoredEvent.from_record(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = events[-1]
        raw = f"{last.received_at.isoformat()}|{last.id}".encode()
        next_cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
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
