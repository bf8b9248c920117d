"""The pure reading of Stripe events (shared.payment_events): the shapes of before basil as well as today's,
and what is not creditq's. No database: these are the intents that cq_apply_payment_event is then given."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.config import Settings
from shared.payment_events import NOT_OURS, interpret
from shared.pricing import Pricing, load
from tests import stripe_events as se

T = 1_800_000_000


@pytest.fixture(scope="module")
def pricing(settings: Settings) -> Pricing:
    return load(settings.pricing_path)


def test_a_basil_invoice_reads_the_line_period_and_the_subscription(pricing: Pricing) -> None:
    inv = se.invoice(metadata={"accountId": "acct_1", "tier": "pro"}, subscription="sub_1", period_start=T)
    i = interpret(pricing, "invoice.paid", se.event("invoice.paid", inv))
    assert (i.kind, i.account_id, i.subscription, i.period_start, i.period_end) == (
        "subscription",
        "acct_1",
        "sub_1",
        T + se.MONTH,
        T + 2 * se.MONTH,
    )
    assert i.expires_at == datetime.fromtimestamp(T + 2 * se.MONTH, UTC)
    assert i.credits == pricing.tiers["pro"].monthly_credits


def test_a_pre_basil_invoice_reads_the_same(pricing: Pricing) -> None:
    line = {"id": "il_1", "type": "subscription", "proration": False, "subscription": "sub_2",
            "period": {"start": T + se.MONTH, "end": T + 2 * se.MONTH}}  # fmt: skip
    inv = {"id": "in_1", "object": "invoice", "subscription": "sub_2", "period_start": T, "period_end": T + se.MONTH,
           "subscription_details": {"metadata": {"externalId": "user-7", "tier": "pro_plus"}},
           "lines": {"data": [{**line, "proration": True, "period": {"start": T, "end": T + 9}}, line]}}  # fmt: skip
    i = interpret(pricing, "invoice.paid", se.event("invoice.paid", inv))
    assert (i.kind, i.external_id, i.subscription, i.period_start, i.tier) == (
        "subscription",
        "user-7",
        "sub_2",
        T + se.MONTH,
        "pro_plus",
    )


def test_an_invoice_without_lines_falls_back_to_its_own_period(pricing: Pricing) -> None:
    inv = {"id": "in_2", "period_start": T, "period_end": T, "metadata": {"accountId": "acct_1", "tier": "pro"}}
    i = interpret(pricing, "invoice.paid", se.event("invoice.paid", inv))
    assert (i.period_start, i.period_end, i.expires_at, i.subscription) == (T, None, None, None)


def test_the_invoices_own_metadata_wins_over_the_subscriptions(pricing: Pricing) -> None:
    inv = se.invoice(metadata={"accountId": "acct_1", "tier": "pro"}, own_metadata={"tier": "pro_plus"}, period_start=T)
    assert interpret(pricing, "invoice.paid", se.event("invoice.paid", inv)).tier == "pro_plus"


@pytest.mark.parametrize(
    ("event_type", "obj"),
    [
        ("invoice.paid", se.invoice(metadata={"product": "other"}, period_start=T)),
        ("invoice.payment_failed", se.invoice(metadata={}, period_start=T)),
        ("checkout.session.completed", se.checkout_session(metadata={"sku": "tshirt"})),
        ("customer.subscription.deleted", se.subscription(metadata={"plan": "x"}, status="canceled")),
        ("customer.subscription.updated", se.subscription(metadata={})),
    ],
)
def test_what_names_no_creditq_account_is_not_ours(pricing: Pricing, event_type: str, obj: dict[str, object]) -> None:
    i = interpret(pricing, event_type, se.event(event_type, obj))
    assert (i.kind, i.detail) == ("ignore", NOT_OURS)


def test_a_checkout_records_what_a_refund_needs(pricing: Pricing) -> None:
    session = se.checkout_session(metadata={"credits": "250"}, client_reference_id="user-9", amount_total=4900)
    i = interpret(pricing, "checkout.session.completed", se.event("checkout.session.completed", session))
    assert (i.kind, i.account_id, i.credits, i.ref, i.ref2, i.money, i.currency) == (
        "purchase",
        "user-9",
        250,
        session["payment_intent"],
        session["id"],
        4900,
        "usd",
    )


def test_an_expanded_payment_intent_is_read_by_its_id(pricing: Pricing) -> None:
    session = se.checkout_session(metadata={"accountId": "acct_1", "credits": "5"})
    session["payment_intent"] = {"id": "pi_expanded", "object": "payment_intent"}
    i = interpret(pricing, "checkout.session.completed", se.event("checkout.session.completed", session))
    assert i.ref == "pi_expanded"


def test_refunds_and_disputes_name_their_payment_intent(pricing: Pricing) -> None:
    c = interpret(
        pricing, "charge.refunded", se.event("charge.refunded", se.charge(payment_intent="pi_1", amount_refunded=700))
    )
    assert (c.kind, c.ref, c.money, c.cumulative) == ("refund", "pi_1", 700, True)
    r = se.refund(payment_intent="pi_1", amount=300)
    i = interpret(pricing, "refund.created", se.event("refund.created", r))
    assert (i.kind, i.ref, i.ref2, i.money, i.cumulative) == ("refund", "pi_1", r["id"], 300, False)
    failed = interpret(pricing, "refund.created", se.event("refund.created", {**r, "status": "failed"}))
    assert failed.kind == "ignore"
    d = se.dispute(payment_intent="pi_1", amount=2000)
    opened = interpret(pricing, "charge.dispute.created", se.event("charge.dispute.created", d))
    assert (opened.kind, opened.ref2, opened.money) == ("dispute", d["id"], 2000)
    won = interpret(pricing, "charge.dispute.closed", se.event("charge.dispute.closed", {**d, "status": "won"}))
    assert (won.kind, won.dispute_status) == ("dispute_closed", "won")
    lost = interpret(pricing, "charge.dispute.closed", se.event("charge.dispute.closed", {**d, "status": "lost"}))
    assert lost.kind == "dispute"


def test_an_nfd_external_id_is_read_nfc(pricing: Pricing) -> None:
    session = se.checkout_session(metadata={"externalId": "cafe\u0301", "credits": "1"})
    i = interpret(pricing, "checkout.session.completed", se.event("checkout.session.completed", session))
    assert i.external_id == "caf\u00e9"
