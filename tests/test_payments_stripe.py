"""Payment events in Stripe's real shapes (tests/stripe_events.py), signed by Stripe's own library, over real HTTP
against the real Postgres: subscriptions that renew and end, events that are not ours, refunds and disputes that
take back, debt, dismissal. Every money assertion reads Postgres; the audit is clean at the end of each test.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
import stripe

from shared.config import Settings
from shared.ledger import audit, money, payments
from shared.payment_events import interpret
from shared.pricing import Pricing, Tier, load
from shared.signature import sign, verify
from tests import stripe_events as se
from tests.apiserver import ADMIN, Api, bearer, error_of, job
from tests.conftest import CREDITQ, MakeAccount

MONTH = se.MONTH


@pytest.fixture(scope="module")
def pricing(settings: Settings) -> Pricing:
    return load(settings.pricing_path)


@pytest.fixture(scope="module", autouse=True)
async def _no_pending_left(pool: asyncpg.Pool) -> Any:
    """Some tests leave events pending on purpose; drop them so that the module's last audit sees only money."""
    yield
    await pool.execute("DELETE FROM payment_events WHERE status = 'pending' AND id LIKE $1", se.PREFIX + "%")


async def deliver(api: Api, evt: dict[str, Any]) -> httpx.Response:
    return await se.deliver(api.client, api.url, evt)


async def entries(pool: asyncpg.Pool, account_id: str, kind: str | None = None) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT * FROM ledger_entries WHERE account_id = $1 AND ($2::text IS NULL OR kind = $2) ORDER BY id",
            account_id,
            kind,
        )
    )


async def row(pool: asyncpg.Pool, account_id: str) -> asyncpg.Record:
    r = await pool.fetchrow("SELECT * FROM accounts WHERE id = $1", account_id)
    assert r is not None
    return r


async def assert_clean(pool: asyncpg.Pool, *account_ids: str) -> None:
    problems = [p for p in await audit.check(pool, 30) if p.accountId in account_ids]
    assert problems == []


async def event_row(pool: asyncpg.Pool, event_id: str) -> asyncpg.Record:
    r = await pool.fetchrow("SELECT * FROM payment_events WHERE id = $1", event_id)
    assert r is not None
    return r


# --- Signatures: Stripe's library and ours agree ------------------------------------------------------------------


class TestSignatures:
    def test_stripe_signed_header_passes_our_verifier(self) -> None:
        body = json.dumps(se.event("invoice.paid", {"id": "in_1"})).encode()
        header = stripe.WebhookSignature.generate_signature_header(body.decode(), se.SECRET)
        verify(body, header, se.SECRET)

    def test_our_header_passes_stripes_verifier(self) -> None:
        evt = se.event("invoice.paid", {"id": "in_1"})
        body = json.dumps(evt).encode()
        parsed = stripe.Webhook.construct_event(body, sign(body, se.SECRET), se.SECRET)
        assert parsed["id"] == evt["id"]

    def test_stripe_refuses_what_we_refuse(self) -> None:
        body = json.dumps(se.event("invoice.paid", {"id": "in_1"})).encode()
        stale = se.signed(body, timestamp=int(time.time()) - 400)
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.WebhookSignature.verify_header(body.decode(), stale, se.SECRET, tolerance=300)
        with pytest.raises(Exception, match="old"):
            verify(body, stale, se.SECRET)


# --- Subscriptions ----------------------------------------------------------------------------------------------


def first_and_renewal(account_id: str, tier: str = "pro") -> tuple[dict[str, Any], dict[str, Any], int]:
    """The first invoice of a subscription started 10 days ago and its first renewal, as Stripe makes them: the
    first has an empty own period (period_start = period_end = its creation); the renewal's own period_start is
    the first period's start, so only the lines tell the two service periods apart."""
    t0 = int(time.time()) - 10 * 86_400
    sub = "sub_" + uuid.uuid4().hex[:20]
    meta = {"accountId": account_id, "tier": tier}
    first = se.invoice(
        metadata=meta,
        subscription=sub,
        period_start=t0,
        billing_reason="subscription_create",
        lines=[se.invoice_line(start=t0, end=t0 + MONTH, subscription=sub)],
    )
    first["period_end"] = t0
    renewal = se.invoice(metadata=meta, subscription=sub, period_start=t0)  # its line: t0+M .. t0+2M
    return se.event("invoice.paid", first), se.event("invoice.paid", renewal), t0


class TestSubscriptions:
    async def test_first_renewal_is_credited(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount, pricing: Pricing
    ) -> None:
        account, _ = await make_account()
        first, renewal, t0 = first_and_renewal(account.id)
        assert first["data"]["object"]["period_start"] == renewal["data"]["object"]["period_start"]
        for evt in (first, renewal):
            r = await deliver(api, evt)
            assert r.status_code == 200, r.text
            assert r.json()["credited"] == pricing.tiers["pro"].monthly_credits
        assert (await row(pool, account.id))["balance"] == 2 * pricing.tiers["pro"].monthly_credits
        lots = await money.lots(pool, account.id)
        # No rollover: each period's credits expire at its end.
        assert [(lot.kind, lot.expires_at) for lot in lots] == [
            ("subscription", datetime.fromtimestamp(t0 + MONTH, UTC)),
            ("subscription", datetime.fromtimestamp(t0 + 2 * MONTH, UTC)),
        ]
        view = (await api.client.get(f"/v1/admin/accounts/{account.id}", headers=ADMIN)).json()
        assert view["expiringNext"] == {
            "credits": pricing.tiers["pro"].monthly_credits,
            "expiresAt": datetime.fromtimestamp(t0 + MONTH, UTC).isoformat(),
        }
        await assert_clean(pool, account.id)

    async def test_any_order_and_duplicates_credit_each_period_once(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount, pricing: Pricing
    ) -> None:
        account, _ = await make_account()
        first, renewal, _ = first_and_renewal(account.id)
        again = {**renewal, "id": se.PREFIX + uuid.uuid4().hex[:20]}  # the same invoice under another event id
        deliveries = [renewal, renewal, first, again, first]
        responses = await asyncio.gather(*(deliver(api, e) for e in deliveries))
        assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
        assert len(await entries(pool, account.id, "subscription")) == 2
        assert (await row(pool, account.id))["balance"] == 2 * pricing.tiers["pro"].monthly_credits
        assert (await row(pool, account.id))["tier"] == "pro"
        await assert_clean(pool, account.id)

    async def test_proration_invoice_allocates_nothing(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        t = int(time.time())
        sub = "sub_" + uuid.uuid4().hex[:10]
        lines = [
            se.invoice_line(start=t, end=t + MONTH, subscription=sub, proration=True, amount=-1000),
            se.invoice_line(start=t, end=t + MONTH, subscription=sub, proration=True, amount=3000),
        ]
        inv = se.invoice(
            metadata={"accountId": account.id, "tier": "pro_plus"},
            subscription=sub,
            period_start=t - MONTH,
            lines=lines,
            billing_reason="subscription_update",
        )
        r = await deliver(api, se.event("invoice.paid", inv))
        assert r.status_code == 200, r.text
        assert r.json()["ignored"] is True
        assert await entries(pool, account.id) == []
        assert (await row(pool, account.id))["tier"] == "free"

    async def test_invoice_with_prorations_and_a_period_line_allocates_that_period(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount, pricing: Pricing
    ) -> None:
        account, _ = await make_account()
        t = int(time.time())
        sub = "sub_" + uuid.uuid4().hex[:10]
        lines = [
            se.invoice_line(start=t - 5 * 86_400, end=t, subscription=sub, proration=True, amount=-500),
            se.invoice_line(start=t, end=t + MONTH, subscription=sub),
        ]
        inv = se.invoice(
            metadata={"accountId": account.id, "tier": "pro_plus"},
            subscription=sub,
            period_start=t - MONTH,
            lines=lines,
        )
        r = await deliver(api, se.event("invoice.paid", inv))
        assert r.status_code == 200, r.text
        assert r.json()["credited"] == pricing.tiers["pro_plus"].monthly_credits
        [lot] = await money.lots(pool, account.id)
        assert lot.expires_at == datetime.fromtimestamp(t + MONTH, UTC)

    async def test_zero_dollar_trial_invoice_allocates_the_trial_period(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount, pricing: Pricing
    ) -> None:
        account, _ = await make_account()
        t = int(time.time())
        sub = "sub_" + uuid.uuid4().hex[:10]
        inv = se.invoice(
            metadata={"accountId": account.id, "tier": "pro"},
            subscription=sub,
            period_start=t,
            amount_paid=0,
            billing_reason="subscription_create",
            lines=[se.invoice_line(start=t, end=t + 14 * 86_400, subscription=sub, amount=0)],
        )
        r = await deliver(api, se.event("invoice.paid", inv))
        assert r.status_code == 200, r.text
        assert r.json()["credited"] == pricing.tiers["pro"].monthly_credits
        assert (await row(pool, account.id))["tier"] == "pro"
        [lot] = await money.lots(pool, account.id)
        assert lot.expires_at == datetime.fromtimestamp(t + 14 * 86_400, UTC)

    async def test_deleted_subscription_drops_to_free_and_a_late_invoice_does_not_restore_it(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount, pricing: Pricing
    ) -> None:
        account, _ = await make_account()
        first, renewal, _ = first_and_renewal(account.id, tier="pro_plus")
        sub_id = first["data"]["object"]["parent"]["subscription_details"]["subscription"]
        assert (await deliver(api, first)).status_code == 200
        assert (await row(pool, account.id))["tier"] == "pro_plus"
        deleted = se.event(
            "customer.subscription.deleted",
            se.subscription(sub_id=sub_id, metadata={"accountId": account.id, "tier": "pro_plus"}, status="canceled"),
        )
        r = await deliver(api, deleted)
        assert r.status_code == 200, r.text
        assert (await row(pool, account.id))["tier"] == "free"
        # The renewal paid before the cancel but delivered after it: its period is credited, the tier stays free.
        r = await deliver(api, renewal)
        assert r.status_code == 200, r.text
        assert r.json()["credited"] == pricing.tiers["pro_plus"].monthly_credits
        assert (await row(pool, account.id))["tier"] == "free"
        assert (await deliver(api, deleted)).json()["applied"] is False
        await assert_clean(pool, account.id)

    async def test_updated_with_a_new_tier_sets_it_and_an_older_update_does_not(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account(tier="pro")
        sub_id = "sub_" + uuid.uuid4().hex[:10]
        newer = se.event(
            "customer.subscription.updated",
            se.subscription(sub_id=sub_id, metadata={"accountId": account.id, "tier": "pro_plus"}),
            previous={"metadata": {"tier": "pro"}},
        )
        older = se.event(
            "customer.subscription.updated",
            se.subscription(sub_id=sub_id, metadata={"accountId": account.id, "tier": "free"}),
        )
        older["created"] = newer["created"] - 60
        assert (await deliver(api, newer)).status_code == 200
        assert (await row(pool, account.id))["tier"] == "pro_plus"
        r = await deliver(api, older)
        assert r.status_code == 200, r.text
        assert (await row(pool, account.id))["tier"] == "pro_plus"
        no_tier = se.event("customer.subscription.updated", se.subscription(metadata={"accountId": account.id}))
        r = await deliver(api, no_tier)
        assert (r.status_code, r.json()["ignored"]) == (200, True)

    async def test_payment_failed_grants_nothing_and_is_listed(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account(tier="pro")
        inv = se.invoice(
            metadata={"accountId": account.id, "tier": "pro"},
            period_start=int(time.time()),
            status="open",
            attempt_count=2,
        )
        evt = se.event("invoice.payment_failed", inv)
        r = await deliver(api, evt)
        assert r.status_code == 200, r.text
        assert await entries(pool, account.id) == []
        listing = await api.client.get(
            "/v1/admin/payments/events", params={"type": "invoice.payment_failed", "limit": "200"}, headers=ADMIN
        )
        [item] = [e for e in listing.json()["items"] if e["eventId"] == evt["id"]]
        assert item["accountId"] == account.id
        assert "payment failed" in item["detail"] and "attempt 2" in item["detail"]

    def test_rollover_tier_credits_never_expire(self, pricing: Pricing) -> None:
        tiers = {**pricing.tiers, "keep": Tier("keep", 500, 0, 0, rollover=True)}
        keeping = Pricing(models=pricing.models, tiers=tiers)
        t = 1_800_000_000
        inv = se.invoice(metadata={"accountId": "acct_x", "tier": "keep"}, period_start=t)
        intent = interpret(keeping, "invoice.paid", se.event("invoice.paid", inv))
        assert (intent.kind, intent.credits, intent.period_start, intent.expires_at) == (
            "subscription",
            500,
            t + MONTH,
            None,
        )
        inv = se.invoice(metadata={"accountId": "acct_x", "tier": "pro"}, period_start=t)
        intent = interpret(keeping, "invoice.paid", se.event("invoice.paid", inv))
        assert intent.expires_at == datetime.fromtimestamp(t + 2 * MONTH, UTC)


# --- Only our events wait ---------------------------------------------------------------------------------------


class TestOurs:
    async def test_another_products_invoice_is_stored_ignored(self, api: Api, pool: asyncpg.Pool) -> None:
        inv = se.invoice(metadata={"plan": "enterprise"}, period_start=int(time.time()))
        evt = se.event("invoice.paid", inv)
        r = await deliver(api, evt)
        assert r.status_code == 200, r.text
        assert r.json()["ignored"] is True
        stored = await event_row(pool, evt["id"])
        assert stored["status"] == "ignored"
        assert not [p for p in await audit.check(pool, 30) if p.eventId == evt["id"]]

    async def test_subscription_mode_checkout_is_200_and_no_entry(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        session = se.checkout_session(metadata={"accountId": account.id, "tier": "pro"}, mode="subscription")
        r = await deliver(api, se.event("checkout.session.completed", session))
        assert r.status_code == 200, r.text
        assert r.json()["ignored"] is True
        assert await entries(pool, account.id) == []

    @pytest.mark.parametrize("by", ["accountId", "externalId"])
    async def test_client_reference_id_names_the_account(
        self, by: str, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        ext = "user-" + uuid.uuid4().hex[:8]
        account, _ = await make_account(external_id=ext)
        ref = account.id if by == "accountId" else ext
        session = se.checkout_session(metadata={"credits": "70"}, client_reference_id=ref)
        r = await deliver(api, se.event("checkout.session.completed", session))
        assert r.status_code == 200, r.text
        assert (await row(pool, account.id))["balance"] == 70
        purchase = await pool.fetchrow("SELECT * FROM purchases WHERE account_id = $1", account.id)
        assert purchase is not None
        assert (purchase["payment_intent"], purchase["session_id"], purchase["amount"]) == (
            session["payment_intent"],
            session["id"],
            2000,
        )

    async def test_only_an_unknown_account_waits(self, api: Api, pool: asyncpg.Pool) -> None:
        session = se.checkout_session(metadata={"credits": "5"}, client_reference_id="acct_nobody_" + uuid.uuid4().hex)
        evt = se.event("checkout.session.completed", session)
        r = await deliver(api, evt)
        error_of(r, 422, "event_not_applied")
        assert (await event_row(pool, evt["id"]))["status"] == "pending"


# --- Refunds, disputes, debt ------------------------------------------------------------------------------------


async def buy(api: Api, account_id: str, credits: int = 100, amount: int = 2000) -> str:
    """A paid checkout of ``credits`` for ``amount`` cents; returns its payment_intent."""
    session = se.checkout_session(metadata={"accountId": account_id, "credits": str(credits)}, amount_total=amount)
    r = await deliver(api, se.event("checkout.session.completed", session))
    assert r.status_code == 200, r.text
    pi: str = session["payment_intent"]
    return pi


class TestRefunds:
    async def test_partial_refunds_reported_both_ways_take_back_once_each(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        pi = await buy(api, account.id)  # 100 credits for $20.00
        first = se.refund(payment_intent=pi, amount=1000)
        deliveries = [
            se.event("charge.refunded", se.charge(payment_intent=pi, amount_refunded=1000)),  # cumulative $10
            se.event("refund.created", first),  # the same $10 refund, by id
        ]
        for evt in deliveries + deliveries:  # and each delivered twice
            r = await deliver(api, evt)
            assert r.status_code == 200, r.text
        assert (await row(pool, account.id))["balance"] == 50
        # A second refund of $5, its refund.created first, then the charge's new cumulative $15.
        second = se.refund(payment_intent=pi, amount=500)
        for evt in (
            se.event("refund.created", second),
            se.event("charge.refunded", se.charge(payment_intent=pi, amount_refunded=1500)),
        ):
            assert (await deliver(api, evt)).status_code == 200
        refunds = await entries(pool, account.id, "refund")
        assert [e["amount"] for e in refunds] == [-50, -25]
        assert (await row(pool, account.id))["balance"] == 25
        await assert_clean(pool, account.id)

    async def test_one_refund_delivered_20_times_concurrently_takes_back_once(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        pi = await buy(api, account.id)
        charge_refunded = se.event("charge.refunded", se.charge(payment_intent=pi, amount_refunded=2000))
        refund_created = se.event("refund.created", se.refund(payment_intent=pi, amount=2000))
        deliveries = [charge_refunded] * 10 + [refund_created] * 10
        responses = await asyncio.gather(*(deliver(api, e) for e in deliveries))
        assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
        assert [e["amount"] for e in await entries(pool, account.id, "refund")] == [-100]
        assert (await row(pool, account.id))["balance"] == 0
        await assert_clean(pool, account.id)

    async def test_refund_of_a_charge_that_is_not_ours_is_ignored(self, api: Api) -> None:
        evt = se.event("charge.refunded", se.charge(payment_intent="pi_" + uuid.uuid4().hex, amount_refunded=500))
        r = await deliver(api, evt)
        assert (r.status_code, r.json()["ignored"]) == (200, True)

    async def test_refund_of_spent_credits_is_a_debt_that_blocks_jobs_until_paid(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account()
        pi = await buy(api, account.id)
        await money.hold(pool, account.id, "h_" + uuid.uuid4().hex, 80)
        [hold_id] = [r["id"] for r in await pool.fetch("SELECT id FROM holds WHERE account_id = $1", account.id)]
        await money.capture(pool, hold_id)  # 80 of the 100 are spent
        r = await deliver(api, se.event("charge.refunded", se.charge(payment_intent=pi, amount_refunded=2000)))
        assert r.status_code == 200, r.text
        a = await row(pool, account.id)
        assert (a["balance"], a["held"], a["owing"]) == (-80, 0, True)
        view = (await api.client.get("/v1/account", headers=bearer(key))).json()
        assert (view["available"], view["owed"]) == (-80, 80)
        # While below zero every job is 402, and so is a transfer; a credit pays the debt first.
        error_of(await api.client.post("/v1/jobs", json=job(), headers=bearer(key)), 402, "insufficient_credits")
        other, _ = await make_account()
        transfer = await api.client.post(
            "/v1/transfers", json={"toAccountId": other.id, "amount": 1}, headers=bearer(key)
        )
        error_of(transfer, 402, "insufficient_credits")
        await money.credit(pool, account.id, 50, "pays part", None)
        error_of(await api.client.post("/v1/jobs", json=job(), headers=bearer(key)), 402, "insufficient_credits")
        assert await money.lots(pool, account.id) == []
        await money.credit(pool, account.id, 40, "pays the rest", None)
        a = await row(pool, account.id)
        assert (a["balance"], a["owing"]) == (10, False)
        assert [lot.remaining for lot in await money.lots(pool, account.id)] == [10]
        assert (await api.client.post("/v1/jobs", json=job(), headers=bearer(key))).status_code == 202
        await assert_clean(pool, account.id)

    async def test_refund_while_credits_are_held_leaves_them_to_the_live_task(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        pi = await buy(api, account.id)
        hold_id = "h_" + uuid.uuid4().hex
        await money.hold(pool, account.id, hold_id, 80)
        r = await deliver(api, se.event("refund.created", se.refund(payment_intent=pi, amount=2000)))
        assert r.status_code == 200, r.text
        a = await row(pool, account.id)
        assert (a["balance"], a["held"], a["owing"]) == (0, 80, True)
        await assert_clean(pool, account.id)  # a debt is not an audit problem: the books are right
        await money.release(pool, hold_id)  # the task failed: nothing was spent, nothing is owed
        a = await row(pool, account.id)
        assert (a["balance"], a["held"], a["owing"]) == (0, 0, False)
        await assert_clean(pool, account.id)

    async def test_schema_refuses_a_negative_available_that_no_take_back_explains(
        self, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account(credits=5)
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute("UPDATE accounts SET held = 6 WHERE id = $1", account.id)
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute(
                "INSERT INTO ledger_entries (account_id, kind, amount, balance_before, balance_after, held_after) "
                "VALUES ($1, 'adjustment', -6, 5, -1, 0)",
                account.id,
            )


class TestDisputes:
    async def test_dispute_takes_back_and_suspends_and_a_win_gives_back(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account()
        pi = await buy(api, account.id, credits=100, amount=2000)
        opened = se.dispute(payment_intent=pi, amount=1000)
        for _ in range(2):
            r = await deliver(api, se.event("charge.dispute.created", opened))
            assert r.status_code == 200, r.text
        a = await row(pool, account.id)
        assert (a["balance"], a["status"]) == (50, "suspended")
        assert [e["amount"] for e in await entries(pool, account.id, "dispute")] == [-50]
        error_of(await api.client.post("/v1/jobs", json=job(), headers=bearer(key)), 403, "forbidden")
        won = {**opened, "status": "won"}
        for _ in range(2):
            r = await deliver(api, se.event("charge.dispute.closed", won))
            assert r.status_code == 200, r.text
        assert [e["amount"] for e in await entries(pool, account.id, "dispute_reversal")] == [50]
        assert (await row(pool, account.id))["balance"] == 100
        await assert_clean(pool, account.id)

    async def test_a_lost_dispute_keeps_the_take_back(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        pi = await buy(api, account.id)
        opened = se.dispute(payment_intent=pi)
        assert (await deliver(api, se.event("charge.dispute.created", opened))).status_code == 200
        assert (await deliver(api, se.event("charge.dispute.closed", {**opened, "status": "lost"}))).status_code == 200
        assert (await row(pool, account.id))["balance"] == 0
        assert await entries(pool, account.id, "dispute_reversal") == []
        await assert_clean(pool, account.id)


# --- Dismissal ----------------------------------------------------------------------------------------------------


class TestDismiss:
    async def test_admin_dismiss_records_the_reason_and_clears_the_audit(self, api: Api, pool: asyncpg.Pool) -> None:
        session = se.checkout_session(metadata={"accountId": "acct_gone_" + uuid.uuid4().hex, "credits": "5"})
        evt = se.event("checkout.session.completed", session)
        error_of(await deliver(api, evt), 422, "event_not_applied")
        assert evt["id"] in {p.eventId for p in await audit.check(pool, 30)}
        url = f"/v1/admin/payments/events/{evt['id']}/dismiss"
        error_of(await api.client.post(url, json={}, headers=ADMIN), 422, "validation_error")
        error_of(await api.client.post(url, json={"reason": "x"}), 401, "unauthenticated")
        r = await api.client.post(url, json={"reason": "account deleted before payment"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["dismissedReason"]) == ("dismissed", "account deleted before payment")
        assert evt["id"] not in {p.eventId for p in await audit.check(pool, 30)}
        again = await api.client.post(url, json={"reason": "twice"}, headers=ADMIN)
        assert (again.status_code, again.json()["dismissedReason"]) == (200, "account deleted before payment")
        # Stripe's next retry is answered 200: nothing to do, and no longer pending.
        retry = await deliver(api, evt)
        assert (retry.status_code, retry.json()["status"]) == (200, "dismissed")
        error_of(
            await api.client.post("/v1/admin/payments/events/evt_nope/dismiss", json={"reason": "x"}, headers=ADMIN),
            404,
            "not_found",
        )

    async def test_an_applied_event_cannot_be_dismissed(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        evt = se.event(
            "checkout.session.completed", se.checkout_session(metadata={"accountId": account.id, "credits": "3"})
        )
        assert (await deliver(api, evt)).status_code == 200
        r = await api.client.post(f"/v1/admin/payments/events/{evt['id']}/dismiss", json={"reason": "x"}, headers=ADMIN)
        error_of(r, 409, "conflict")
        assert (await event_row(pool, evt["id"]))["status"] == "applied"

    async def test_cli_dismiss(self, api: Api, pool: asyncpg.Pool, base_env: dict[str, str]) -> None:
        session = se.checkout_session(metadata={"externalId": "never-" + uuid.uuid4().hex, "credits": "5"})
        evt = se.event("checkout.session.completed", session)
        error_of(await deliver(api, evt), 422, "event_not_applied")
        env = {**os.environ, **base_env}
        missing = subprocess.run([CREDITQ, "audit", "--dismiss", evt["id"]], env=env, capture_output=True, text=True)
        assert missing.returncode == 2 and "--reason" in missing.stderr
        done = await asyncio.to_thread(
            subprocess.run,
            [CREDITQ, "audit", "--dismiss", evt["id"], "--reason", "test customer, never paid"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert f"dismissed: payment event {evt['id']}" in done.stdout, done.stdout + done.stderr
        assert f"eventId={evt['id']}" not in done.stdout  # the audit that follows no longer reports it
        stored = await event_row(pool, evt["id"])
        assert (stored["status"], stored["dismissed_reason"]) == ("dismissed", "test customer, never paid")
        assert (await payments.get_event(pool, evt["id"])).view()["dismissedReason"] == "test customer, never paid"


class TestOutOfOrder:
    async def test_a_refund_before_its_purchase_waits_then_applies(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount, pricing: Pricing
    ) -> None:
        account, _ = await make_account()
        session = se.checkout_session(metadata={"accountId": account.id, "credits": "100"})
        pi = session["payment_intent"]
        # The charge carries payment_intent_data.metadata, so the early refund is known to be ours.
        early = se.event(
            "charge.refunded", se.charge(payment_intent=pi, amount_refunded=2000, metadata={"accountId": account.id})
        )
        error_of(await deliver(api, early), 422, "event_not_applied")
        assert (await deliver(api, se.event("checkout.session.completed", session))).status_code == 200
        r = await deliver(api, early)  # Stripe's retry
        assert (r.status_code, r.json()["applied"], r.json()["credited"]) == (200, True, -100)
        assert (await row(pool, account.id))["balance"] == 0
        await assert_clean(pool, account.id)

    async def test_a_lost_close_before_its_opening_takes_back_once(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        pi = await buy(api, account.id)
        opened = se.dispute(payment_intent=pi, amount=2000)
        assert (await deliver(api, se.event("charge.dispute.closed", {**opened, "status": "lost"}))).status_code == 200
        assert (await deliver(api, se.event("charge.dispute.created", opened))).status_code == 200
        assert [e["amount"] for e in await entries(pool, account.id, "dispute")] == [-100]
        assert (await row(pool, account.id))["status"] == "suspended"
        await assert_clean(pool, account.id)

    async def test_a_won_close_before_its_opening_moves_nothing(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        pi = await buy(api, account.id)
        opened = se.dispute(payment_intent=pi, amount=2000)
        assert (await deliver(api, se.event("charge.dispute.closed", {**opened, "status": "won"}))).status_code == 200
        assert (await deliver(api, se.event("charge.dispute.created", opened))).status_code == 200
        assert await entries(pool, account.id, "dispute") == []
        assert await entries(pool, account.id, "dispute_reversal") == []
        assert (await row(pool, account.id))["balance"] == 100

    async def test_an_inquiry_closed_without_chargeback_gives_back(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        pi = await buy(api, account.id)
        inquiry = se.dispute(payment_intent=pi, amount=2000, status="warning_needs_response")
        assert (await deliver(api, se.event("charge.dispute.created", inquiry))).status_code == 200
        closed = {**inquiry, "status": "warning_closed"}
        assert (await deliver(api, se.event("charge.dispute.closed", closed))).status_code == 200
        assert (await row(pool, account.id))["balance"] == 100
        await assert_clean(pool, account.id)
