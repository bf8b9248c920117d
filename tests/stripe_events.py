"""Stripe events in the shapes Stripe sends today, signed with the official ``stripe`` library.

The objects follow Stripe's API reference for API versions 2025-03-31.basil and later (docs.stripe.com/api:
"The Checkout Session object", "The Invoice object", "The Invoice Line Item object", "The Subscription object",
"The Charge object", "The Refund object", "The Dispute object"): an invoice's subscription and its metadata are
under ``parent.subscription_details``, a line's service period is ``period`` and its subscription under
``parent.subscription_item_details`` (with ``proration``), its price under ``pricing.price_details``; a
subscription's periods are on its items; a charge reports the cumulative ``amount_refunded`` and no longer embeds
its refunds. Only the fields creditq reads are varied; the rest are there so that the fixtures look like what
arrives (and so that a reader of an unexpected field would notice it is there).

:func:`signed` signs a body with ``stripe.WebhookSignature.generate_signature_header`` (Stripe's own helper
"for signing payloads in unit tests") and checks with ``stripe.Webhook.construct_event`` that Stripe's own
verifier accepts it, so the tests prove that creditq accepts what Stripe's library signs.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import stripe

SECRET = "whsec_test"  # conftest's PAYMENTS_WEBHOOK_SECRET
API_VERSION = "2025-03-31.basil"
PREFIX = "evt_s_"
MONTH = 30 * 86_400


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def event(event_type: str, obj: dict[str, Any], *, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The event envelope (``object: "event"``) around ``obj``."""
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": PREFIX + uuid.uuid4().hex[:20],
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": _id("req"), "idempotency_key": str(uuid.uuid4())},
        "type": event_type,
    }


def checkout_session(
    *,
    metadata: dict[str, str] | None = None,
    client_reference_id: str | None = None,
    amount_total: int = 2000,
    mode: str = "payment",
    payment_status: str = "paid",
    payment_intent: str | None = None,
) -> dict[str, Any]:
    """A completed Checkout Session. ``payment_intent`` defaults to a fresh one in payment mode."""
    if payment_intent is None and mode == "payment":
        payment_intent = _id("pi")
    return {
        "id": _id("cs_test"),
        "object": "checkout.session",
        "amount_subtotal": amount_total,
        "amount_total": amount_total,
        "client_reference_id": client_reference_id,
        "created": int(time.time()) - 60,
        "currency": "usd",
        "customer": _id("cus"),
        "customer_details": {"email": "buyer@example.com", "name": "A Buyer"},
        "invoice": None,
        "livemode": False,
        "metadata": metadata or {},
        "mode": mode,
        "payment_intent": payment_intent,
        "payment_status": payment_status,
        "status": "complete",
        "subscription": _id("sub") if mode == "subscription" else None,
        "success_url": "https://example.com/ok",
        "url": None,
    }


def invoice_line(
    *,
    start: int,
    end: int,
    subscription: str | None,
    proration: bool = False,
    amount: int = 2000,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An invoice line item of a subscription (``parent.type`` ``subscription_item_details``)."""
    return {
        "id": _id("il"),
        "object": "line_item",
        "amount": amount,
        "currency": "usd",
        "description": "1 x Pro (at $20.00 / month)",
        "discount_amounts": [],
        "discountable": not proration,
        "discounts": [],
        "invoice": None,
        "livemode": False,
        "metadata": metadata or {},
        "parent": {
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": _id("ii") if proration else None,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": subscription,
                "subscription_item": _id("si"),
            },
        },
        "period": {"end": end, "start": start},
        "pricing": {
            "price_details": {"price": _id("price"), "product": _id("prod")},
            "type": "price_details",
            "unit_amount_decimal": str(amount),
        },
        "quantity": 1,
        "taxes": [],
    }


def invoice(
    *,
    metadata: dict[str, str],
    subscription: str | None = None,
    period_start: int,
    lines: list[dict[str, Any]] | None = None,
    billing_reason: str = "subscription_cycle",
    amount_paid: int = 2000,
    own_metadata: dict[str, str] | None = None,
    status: str = "paid",
    attempt_count: int = 1,
) -> dict[str, Any]:
    """A subscription invoice. ``metadata`` is the subscription's (``parent.subscription_details.metadata``);
    ``period_start`` the invoice's own (one period back, as Stripe sets it); ``lines`` default to one
    non-proration line for the month from ``period_start + MONTH``: the period being paid for."""
    subscription = subscription or _id("sub")
    if lines is None:
        lines = [invoice_line(start=period_start + MONTH, end=period_start + 2 * MONTH, subscription=subscription)]
    invoice_id = _id("in")
    for line in lines:
        line["invoice"] = invoice_id
    return {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "amount_due": amount_paid,
        "amount_paid": amount_paid if status == "paid" else 0,
        "amount_remaining": 0 if status == "paid" else amount_paid,
        "attempt_count": attempt_count,
        "attempted": True,
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "created": period_start + MONTH,
        "currency": "usd",
        "customer": _id("cus"),
        "lines": {
            "object": "list",
            "data": lines,
            "has_more": False,
            "total_count": len(lines),
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "livemode": False,
        "metadata": own_metadata or {},
        "parent": {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": metadata, "subscription": subscription},
        },
        "period_end": period_start + MONTH,
        "period_start": period_start,
        "status": status,
        "total": amount_paid,
    }


def subscription(
    *, sub_id: str | None = None, metadata: dict[str, str], status: str = "active", start: int = 1_760_000_000
) -> dict[str, Any]:
    """A Subscription (basil: the current period is on its items)."""
    sub_id = sub_id or _id("sub")
    return {
        "id": sub_id,
        "object": "subscription",
        "billing_cycle_anchor": start,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": int(time.time()) if status == "canceled" else None,
        "collection_method": "charge_automatically",
        "created": start,
        "currency": "usd",
        "customer": _id("cus"),
        "ended_at": int(time.time()) if status == "canceled" else None,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": _id("si"),
                    "object": "subscription_item",
                    "current_period_end": start + MONTH,
                    "current_period_start": start,
                    "price": {"id": _id("price"), "object": "price", "unit_amount": 2000, "currency": "usd"},
                    "quantity": 1,
                    "subscription": sub_id,
                }
            ],
            "has_more": False,
        },
        "livemode": False,
        "metadata": metadata,
        "start_date": start,
        "status": status,
    }


def charge(
    *, payment_intent: str, amount: int = 2000, amount_refunded: int = 0, metadata: dict[str, str] | None = None
) -> dict[str, Any]:
    """A Charge as ``charge.refunded`` carries it: the cumulative ``amount_refunded``, no embedded refunds."""
    return {
        "id": _id("ch"),
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "captured": True,
        "created": int(time.time()) - 3600,
        "currency": "usd",
        "livemode": False,
        "metadata": metadata or {},
        "paid": True,
        "payment_intent": payment_intent,
        "refunded": amount_refunded >= amount,
        "status": "succeeded",
    }


def refund(*, payment_intent: str, amount: int, status: str = "succeeded") -> dict[str, Any]:
    """A Refund (``refund.created``)."""
    return {
        "id": _id("re"),
        "object": "refund",
        "amount": amount,
        "balance_transaction": _id("txn"),
        "charge": _id("ch"),
        "created": int(time.time()),
        "currency": "usd",
        "metadata": {},
        "payment_intent": payment_intent,
        "reason": "requested_by_customer",
        "status": status,
    }


def dispute(
    *, payment_intent: str, amount: int = 2000, status: str = "needs_response", dispute_id: str | None = None
) -> dict[str, Any]:
    """A Dispute (``charge.dispute.created`` / ``.closed``)."""
    return {
        "id": dispute_id or _id("dp"),
        "object": "dispute",
        "amount": amount,
        "balance_transactions": [],
        "charge": _id("ch"),
        "created": int(time.time()),
        "currency": "usd",
        "evidence_details": {"due_by": int(time.time()) + 7 * 86_400, "has_evidence": False},
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": payment_intent,
        "reason": "fraudulent",
        "status": status,
    }


def signed(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header made by Stripe's library, checked by Stripe's own verifier first."""
    header: str = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp)
    if timestamp is None:
        parsed = stripe.Webhook.construct_event(body, header, secret)
        assert parsed["id"] == json.loads(body)["id"]
    return header


async def deliver(client: httpx.AsyncClient, url: str, evt: dict[str, Any]) -> httpx.Response:
    """POST one event to ``url``/v1/webhooks/payments, signed as Stripe signs it."""
    body = json.dumps(evt).encode()
    return await client.post(
        url + "/v1/webhooks/payments",
        content=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": signed(body)},
    )
