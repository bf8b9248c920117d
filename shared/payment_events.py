"""The pure reading of payment events: a Stripe event (a dict, as JSON-decoded from the webhook body) → a typed
:class:`Intent` saying what creditq should do with it. Nothing here touches a database, the clock or the network;
storing and applying the intent is :mod:`shared.ledger.payments` (and the SQL function
``cq_apply_payment_event``).

The shapes are Stripe's of today (API versions up to 2026, "basil" and later) and those of before, where they
differ:

- an invoice's subscription metadata is under ``parent.subscription_details.metadata`` (before basil:
  ``subscription_details.metadata``); its subscription id under ``parent.subscription_details.subscription``
  (before: ``subscription``);
- an invoice line's service period is ``lines.data[].period`` ``{"start", "end"}``; a subscription line has
  ``parent.type == "subscription_item_details"`` with ``parent.subscription_item_details.{subscription,
  proration}`` (before basil: ``type == "subscription"``, ``subscription``, ``proration`` on the line itself);
  the price is under ``pricing.price_details`` (unused here: the tier comes from the metadata).

What creditq acts on (docs/API.md, "Payment events", says the same for users):

- ``checkout.session.completed`` / ``checkout.session.async_payment_succeeded`` with ``metadata.credits`` →
  ``purchase`` (payment_intent and session id recorded for refunds). Unpaid (a delayed method) → ignored until
  ``async_payment_succeeded``. Subscription mode without credits → ignored (the ``invoice.paid`` credits it).
- ``invoice.paid`` with a ``tier`` → ``subscription``: once per (subscription, service period); the period is the
  non-proration subscription line's ``period`` (an invoice without lines: its own ``period_start`` /
  ``period_end``). Credits expire at the period's end unless the tier rolls over. An invoice whose subscription
  lines are all prorations allocates nothing (ignored: a mid-period plan change takes effect through
  ``customer.subscription.updated`` and the next period's invoice). A $0 trial invoice is a service period like
  any other: it sets the tier and allocates the tier's credits for the trial period.
- ``invoice.payment_failed`` → ``note``: recorded against the account (visible in the admin event list), nothing
  moves.
- ``customer.subscription.deleted`` (or ``.updated`` to status ``canceled``) → ``subscription_ended``: tier
  ``free`` at once. ``customer.subscription.updated`` with a ``tier`` in its metadata → ``subscription_changed``.
- ``charge.refunded`` (cumulative ``amount_refunded``) and ``refund.created`` (one refund, by id) → ``refund``
  of the purchase with that ``payment_intent``; ``charge.dispute.created`` → ``dispute``;
  ``charge.dispute.closed`` ``won`` (or an inquiry's ``warning_closed``) → ``dispute_closed`` (gives back); lost →
  ``dispute`` (a close delivered before its opening still takes back, once per dispute id).

An event is creditq's when it names an account (``metadata.accountId`` / ``metadata.externalId``, or a
checkout's ``client_reference_id``) or carries creditq metadata (``credits``, ``tier``); refunds and disputes are
creditq's when their ``payment_intent`` is a recorded purchase (decided in SQL). Any other event → ``ignore``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.errors import InvalidInput
from shared.pricing import Pricing

PURCHASE_TYPES = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded"})
SUBSCRIPTION_TYPES = frozenset({"invoice.paid"})
HANDLED_TYPES = (
    PURCHASE_TYPES
    | SUBSCRIPTION_TYPES
    | frozenset(
        {
            "invoice.payment_failed",
            "customer.subscription.deleted",
            "customer.subscription.updated",
            "charge.refunded",
            "refund.created",
            "charge.dispute.created",
            "charge.dispute.closed",
        }
    )
)

# A purchase larger than this is a typo or an attack; it would also risk the bigint balance.
MAX_PURCHASE_CREDITS = 10**12
MAX_WHOLE = 2**53 - 1
_DIGITS = re.compile(r"[0-9]{1,16}")  # ASCII only: str.isdigit() would accept "²" and friends
_CREDITQ_KEYS = ("accountId", "externalId", "credits", "tier")
NOT_OURS = "not creditq's: no creditq metadata and no account reference"
MAX_EVENT_ID_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Intent:
    """What an event asks for, as ``cq_apply_payment_event`` takes it. ``detail`` set: the event is creditq's
    but cannot be applied, and why (it stays pending). See the module docstring for the kinds."""

    kind: str  # purchase | subscription | subscription_ended | subscription_changed | refund | dispute |
    #            dispute_closed | note | ignore
    account_id: str | None = None
    external_id: str | None = None
    credits: int = 0
    tier: str | None = None
    period_start: int | None = None
    period_end: int | None = None
    expires_at: datetime | None = None
    subscription: str | None = None
    ref: str | None = None  # payment_intent
    ref2: str | None = None  # session id | refund id | dispute id
    money: int | None = None  # amount paid / refunded / disputed, smallest currency unit
    currency: str | None = None
    cumulative: bool = False  # money is a charge's cumulative amount_refunded
    dispute_status: str | None = None
    created: int = 0
    reason: str | None = None
    detail: str | None = None


# --- Small readers ----------------------------------------------------------------------------------------------


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _object(event: Mapping[str, Any]) -> dict[str, Any]:
    return _dict(_dict(event.get("data")).get("object"))


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _id(value: object) -> str | None:
    """An id field that may be expanded into its object (``"pi_..."`` or ``{"id": "pi_...", ...}``)."""
    return _text(value) or _text(_dict(value).get("id"))


def _whole(value: object) -> int | None:
    """A whole number in 0..MAX_WHOLE from an int or a string of ASCII digits (Stripe metadata are strings)."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        number = int(value.strip())
    # Bounded so that nothing reaching Postgres can overflow a bigint (that would be a 500, not a reason).
    return number if number is not None and 0 <= number <= MAX_WHOLE else None


def _unix(value: int | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def metadata(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The creditq metadata of an object: an invoice's subscription metadata (``parent.subscription_details``,
    or ``subscription_details`` before basil) under its own ``metadata``, which wins where both say something."""
    merged: dict[str, Any] = {}
    merged.update(_dict(_dict(_dict(obj.get("parent")).get("subscription_details")).get("metadata")))
    merged.update(_dict(_dict(obj.get("subscription_details")).get("metadata")))
    merged.update(_dict(obj.get("metadata")))
    return merged


def _account_ref(obj: Mapping[str, Any], meta: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(accountId, externalId) named by the object: metadata first, then Checkout's ``client_reference_id``
    (an accountId or an externalId, resolved in SQL as accountId is)."""
    account_id, external_id = _text(meta.get("accountId")), _text(meta.get("externalId"))
    if account_id is None and external_id is None:
        account_id = _text(obj.get("client_reference_id"))
    return _nfc(account_id), _nfc(external_id)


def _nfc(ref: str | None) -> str | None:
    # externalIds are stored NFC-normalised; a reference in another normal form names the same account.
    return unicodedata.normalize("NFC", ref) if ref is not None else None


def _ours(obj: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    return any(meta.get(k) is not None for k in _CREDITQ_KEYS) or _text(obj.get("client_reference_id")) is not None


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


def initial_status(event_type: str, event: Mapping[str, Any]) -> tuple[str, str | None]:
    """(status, detail) with which a new event is stored: ``ignored`` for types creditq does not act on (and an
    unpaid checkout), else ``pending`` (it is applied right after). Pure."""
    if event_type not in HANDLED_TYPES:
        return "ignored", f"event type {event_type} is not acted on"
    if event_type == "checkout.session.completed" and _object(event).get("payment_status") == "unpaid":
        return "ignored", (
            "payment_status is unpaid (a delayed payment method): "
            "checkout.session.async_payment_succeeded will credit it"
        )
    return "pending", "received; not applied yet"


# --- The reading ------------------------------------------------------------------------------------------------


def interpret(pricing: Pricing, event_type: str, event: Mapping[str, Any]) -> Intent:
    """What an event asks for, validated. Never raises: a problem is an Intent with ``detail`` set (the event
    stays pending with that reason); an event that is not creditq's is ``ignore``. Pure."""
    status, why = initial_status(event_type, event)
    if status == "ignored":
        return Intent(kind="ignore", detail=why)
    obj = _object(event)
    created = _whole(event.get("created")) or 0
    if event_type in PURCHASE_TYPES:
        return _purchase(obj)
    if event_type in ("charge.refunded", "refund.created", "charge.dispute.created", "charge.dispute.closed"):
        return _takeback(event_type, obj)
    meta = metadata(obj)
    if not _ours(obj, meta):
        return Intent(kind="ignore", detail=NOT_OURS)
    account_id, external_id = _account_ref(obj, meta)
    if event_type == "invoice.paid":
        return _invoice_paid(pricing, obj, meta, account_id, external_id)
    if event_type == "invoice.payment_failed":
        attempt = _whole(obj.get("attempt_count")) or "?"
        invoice_id = _text(obj.get("id")) or "?"
        why = f"payment failed (invoice {invoice_id}, attempt {attempt}): nothing granted"
        return Intent("note", account_id, external_id, reason=why)
    return _subscription_change(pricing, event_type, obj, meta, account_id, external_id, created)


def _missing_account(account_id: str | None, external_id: str | None) -> list[str]:
    if account_id is None and external_id is None:
        return ["metadata.accountId (or metadata.externalId, or client_reference_id) is missing"]
    return []


def _purchase(obj: Mapping[str, Any]) -> Intent:
    meta = metadata(obj)
    if not _ours(obj, meta):
        return Intent(kind="ignore", detail=NOT_OURS)
    raw = meta.get("credits")
    if obj.get("mode") == "subscription" and raw is None:
        return Intent(kind="ignore", detail="subscription-mode checkout: its credits come with invoice.paid")
    account_id, external_id = _account_ref(obj, meta)
    problems = _missing_account(account_id, external_id)
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
    session_id = _text(obj.get("id"))
    return Intent(
        "purchase",
        account_id,
        external_id,
        credits=credits,
        ref=_id(obj.get("payment_intent")),
        ref2=session_id,
        money=_whole(obj.get("amount_total")),
        currency=_text(obj.get("currency")),
        reason=f"purchase: checkout {session_id}" if session_id else "purchase",
    )


def _subscription_line(obj: Mapping[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """(the first non-proration subscription line, whether the invoice has lines at all)."""
    lines = [line for line in _list(_dict(obj.get("lines")).get("data")) if isinstance(line, dict)]
    for line in lines:
        parent = _dict(line.get("parent"))
        details = _dict(parent.get("subscription_item_details"))
        is_subscription = parent.get("type") == "subscription_item_details" or line.get("type") == "subscription"
        proration = details.get("proration") is True or line.get("proration") is True
        if is_subscription and not proration:
            return line, True
    return None, bool(lines)


def _is_proration_only(obj: Mapping[str, Any]) -> bool:
    lines = [line for line in _list(_dict(obj.get("lines")).get("data")) if isinstance(line, dict)]
    return bool(lines) and all(
        _dict(_dict(line.get("parent")).get("subscription_item_details")).get("proration") is True
        or _dict(_dict(line.get("parent")).get("invoice_item_details")).get("proration") is True
        or line.get("proration") is True
        for line in lines
    )


def _invoice_paid(
    pricing: Pricing, obj: Mapping[str, Any], meta: Mapping[str, Any], account_id: str | None, external_id: str | None
) -> Intent:
    if _is_proration_only(obj):
        return Intent(
            kind="ignore",
            detail="a proration invoice allocates nothing: the tier changes with customer.subscription.updated "
            "and the next period's invoice allocates",
        )
    problems = _missing_account(account_id, external_id)
    tier_name = _text(meta.get("tier"))
    tier = pricing.tiers.get(tier_name) if tier_name else None
    if tier_name is None:
        problems.append("metadata.tier is missing")
    elif tier is None:
        problems.append(f"unknown tier {tier_name[:40]!r} (have: {', '.join(pricing.tiers)})")
    line, _ = _subscription_line(obj)
    subscription = _id(_dict(_dict(obj.get("parent")).get("subscription_details")).get("subscription")) or _id(
        obj.get("subscription")
    )
    if line is not None:
        period = _dict(line.get("period"))
        start, end = _whole(period.get("start")), _whole(period.get("end"))
        details = _dict(_dict(line.get("parent")).get("subscription_item_details"))
        subscription = subscription or _id(details.get("subscription")) or _id(line.get("subscription"))
        if start is None:
            problems.append("lines.data[].period.start must be a unix time")
    else:
        start, end = _whole(obj.get("period_start")), _whole(obj.get("period_end"))
        if start is None:
            problems.append("data.object.period_start must be a unix time")
    if problems:
        return Intent("subscription", account_id, external_id, detail="; ".join(problems))
    assert tier is not None
    assert start is not None
    if end is not None and end <= start:
        end = None  # an invoice's own period can be empty (the first invoice): no end to expire at
    invoice_id = _text(obj.get("id"))
    reason = f"subscription: {tier.name} for the period from {start}"
    if invoice_id:
        reason += f" (invoice {invoice_id})"
    rollover = tier.rollover
    return Intent(
        "subscription",
        account_id,
        external_id,
        credits=tier.monthly_credits,
        tier=tier.name,
        period_start=start,
        period_end=end,
        expires_at=None if rollover else _unix(end),
        subscription=subscription,
        reason=reason,
    )


def _subscription_change(
    pricing: Pricing,
    event_type: str,
    obj: Mapping[str, Any],
    meta: Mapping[str, Any],
    account_id: str | None,
    external_id: str | None,
    created: int,
) -> Intent:
    subscription = _text(obj.get("id"))
    problems = _missing_account(account_id, external_id)
    if subscription is None:
        problems.append("data.object.id (the subscription) is missing")
    if event_type == "customer.subscription.deleted" or obj.get("status") == "canceled":
        if problems:
            return Intent("subscription_ended", account_id, external_id, detail="; ".join(problems))
        return Intent(
            "subscription_ended", account_id, external_id, subscription=subscription, created=created, tier="free"
        )
    tier_name = _text(meta.get("tier"))
    if tier_name is None:
        return Intent(kind="ignore", detail="customer.subscription.updated without a tier in its metadata")
    tier = pricing.tiers.get(tier_name)
    if tier is None:
        problems.append(f"unknown tier {tier_name[:40]!r} (have: {', '.join(pricing.tiers)})")
    if problems:
        return Intent("subscription_changed", account_id, external_id, detail="; ".join(problems))
    assert tier is not None
    return Intent(
        "subscription_changed", account_id, external_id, tier=tier.name, subscription=subscription, created=created
    )


def _takeback(event_type: str, obj: Mapping[str, Any]) -> Intent:
    """Refunds and disputes: matched to their purchase by payment_intent in SQL. The object's own metadata may
    name the account (``payment_intent_data.metadata`` is copied onto charges), which keeps an early refund of a
    purchase not yet received pending rather than ignored."""
    meta = metadata(obj)
    account_id, external_id = _nfc(_text(meta.get("accountId"))), _nfc(_text(meta.get("externalId")))
    payment_intent = _id(obj.get("payment_intent"))
    object_id = _text(obj.get("id"))
    if event_type == "charge.refunded":
        refunded = _whole(obj.get("amount_refunded"))
        if refunded is None:
            return Intent("refund", account_id, external_id, ref=payment_intent, detail="amount_refunded is missing")
        return Intent(
            "refund",
            account_id,
            external_id,
            ref=payment_intent,
            money=refunded,
            cumulative=True,
            reason=f"refund of charge {object_id or '?'}",
        )
    if event_type == "refund.created":
        if obj.get("status") not in ("succeeded", "pending", None):
            return Intent(kind="ignore", detail=f"refund status {str(obj.get('status'))[:20]}: nothing refunded")
        amount = _whole(obj.get("amount"))
        if amount is None or object_id is None:
            return Intent("refund", account_id, external_id, ref=payment_intent, detail="refund id or amount missing")
        return Intent(
            "refund",
            account_id,
            external_id,
            ref=payment_intent,
            ref2=object_id,
            money=amount,
            reason=f"refund {object_id}",
        )
    if object_id is None:
        return Intent("dispute", account_id, external_id, ref=payment_intent, detail="the dispute id is missing")
    status = _text(obj.get("status"))
    if event_type == "charge.dispute.created" or status not in ("won", "warning_closed"):
        # Opened, or closed lost: the money is gone. A lost close is applied as the dispute itself, so that one
        # delivered before its charge.dispute.created still takes the credits back (once per dispute id: if the
        # dispute was seen opened, this changes nothing).
        if event_type == "charge.dispute.created":
            reason = f"dispute {object_id} ({_text(obj.get('reason')) or 'no reason given'})"
        else:
            reason = f"dispute {object_id} closed {status or '?'}"
        return Intent(
            "dispute",
            account_id,
            external_id,
            ref=payment_intent,
            ref2=object_id,
            money=_whole(obj.get("amount")),
            reason=reason,
        )
    # An inquiry closed without a chargeback (warning_closed) took no money either: it gives back as a win does.
    return Intent(
        "dispute_closed",
        account_id,
        external_id,
        ref=payment_intent,
        ref2=object_id,
        money=_whole(obj.get("amount")),
        dispute_status="won",
        reason=f"dispute {object_id} {status}: credits given back",
    )
