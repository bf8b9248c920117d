"""Payment events end to end: signed webhooks over real HTTP against the real Postgres.

The real API app is served in-process by uvicorn on a free port (real sockets, real HTTP), so that 20 concurrent
deliveries of one event are really concurrent requests; every money assertion reads Postgres.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn

from api.app import create_app
from shared.config import Settings
from shared.ledger import audit, payments
from shared.pricing import Pricing, load
from shared.signature import sign
from tests.apiserver import free_port
from tests.conftest import MakeAccount, Processes

SECRET = "whsec_test"  # conftest's PAYMENTS_WEBHOOK_SECRET
ADMIN = {"Authorization": "Bearer admin-secret"}  # conftest's CREDITQ_ADMIN_TOKEN
PREFIX = "evt_t_"


# --- The server -------------------------------------------------------------------------------------------------


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[str]:
    """The real API app (``api.app.create_app``), served by uvicorn in this event loop on a free port."""
    port = free_port()
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError("the test API did not start")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="module")
async def api_url(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[str]:
    async with serve(settings) as url:
        yield url


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=30, limits=limits) as c:
        yield c


@pytest.fixture(scope="module")
def pricing(settings: Settings) -> Pricing:
    return load(settings.pricing_path)


@pytest.fixture(scope="module", autouse=True)
async def _forget_pending_events(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """These tests leave events pending on purpose; drop them at the end so that other suites sharing the
    session's database (and its audit) do not see them."""
    yield
    await pool.execute("DELETE FROM payment_events WHERE status = 'pending' AND id LIKE $1", PREFIX + "%")


# --- Helpers ----------------------------------------------------------------------------------------------------


def new_id() -> str:
    return PREFIX + uuid.uuid4().hex[:16]


def checkout(meta: dict[str, Any], event_id: str | None = None, **obj: Any) -> dict[str, Any]:
    return {
        "id": event_id or new_id(),
        "object": "event",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": "cs_" + uuid.uuid4().hex[:8],
                "object": "checkout.session",
                "payment_status": "paid",
                "metadata": meta,
                **obj,
            }
        },
    }


def invoice(meta: dict[str, Any], period_start: Any, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or new_id(),
        "object": "event",
        "type": "invoice.paid",
        "data": {
            "object": {
                "id": "in_" + uuid.uuid4().hex[:8],
                "object": "invoice",
                "period_start": period_start,
                "metadata": meta,
            }
        },
    }


async def post(
    client: httpx.AsyncClient,
    url: str,
    event: dict[str, Any] | bytes,
    *,
    secret: str = SECRET,
    t: int | None = None,
    header: str | None = None,
    signed: bool = True,
) -> httpx.Response:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    headers = {"Content-Type": "application/json"}
    if signed:
        headers["Stripe-Signature"] = header if header is not None else sign(body, secret, t)
    return await client.post(url + "/v1/webhooks/payments", content=body, headers=headers)


async def stored(pool: asyncpg.Pool, event_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM payment_events WHERE id = $1", event_id)


async def balance(pool: asyncpg.Pool, account_id: str) -> int:
    return int(await pool.fetchval("SELECT balance FROM accounts WHERE id = $1", account_id))


async def entries(pool: asyncpg.Pool, account_id: str, kind: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT * FROM ledger_entries WHERE account_id = $1 AND kind = $2 ORDER BY id", account_id, kind
        )
    )


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


# --- Signatures -------------------------------------------------------------------------------------------------


class TestSignature:
    async def test_valid_signature_applies(
        self, api_url: str, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        event = checkout({"accountId": account.id, "credits": "5"})
        r = await post(client, api_url, event)
        assert r.status_code == 200, r.text
        assert r.json()["applied"] is True
        assert await balance(pool, account.id) == 5

    async def test_rotated_secret_second_v1_matches(
        self, api_url: str, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        event = checkout({"accountId": account.id, "credits": "3"})
        body = json.dumps(event).encode()
        header = sign(body, "whsec_retired", extra_secrets=[SECRET])
        r = await post(client, api_url, body, header=header)
        assert r.status_code == 200, r.text
        assert await balance(pool, account.id) == 3

    @pytest.mark.parametrize(
        "case", ["bad_secret", "stale", "future", "missing", "malformed", "body_changed", "empty_v1"]
    )
    async def test_refused_and_nothing_stored(
        self, case: str, api_url: str, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        event = checkout({"accountId": account.id, "credits": "7"})
        body = json.dumps(event).encode()
        now = int(time.time())
        cases: dict[str, dict[str, Any]] = {
            "bad_secret": {"secret": "whsec_wrong"},
            "stale": {"t": now - 301 - 5},
            "future": {"t": now + 301 + 5},
            "missing": {"signed": False},
            "malformed": {"header": "t=yesterday;v1=abc"},
            "body_changed": {"header": sign(body + b"\n", SECRET)},
            "empty_v1": {"header": f"t={now},v1="},
        }
        kwargs = cases[case]
        r = await post(client, api_url, body, **kwargs)
        assert r.status_code == 400, r.text
        assert error_code(r) == "invalid_signature"
        assert await stored(pool, event["id"]) is None
        assert await balance(pool, account.id) == 0

    async def test_disabled_webhook_is_not_found(
        self, settings: Settings, pool: asyncpg.Pool, client: httpx.AsyncClient
    ) -> None:
        event = checkout({"accountId": "acct_x", "credits": "1"})
        async with serve(replace(settings, payments_webhook_secret="")) as url:
            r = await post(client, url, event)
        assert r.status_code == 404
        assert error_code(r) == "not_found"
        assert "disabled" in r.json()["error"]["message"]
        assert await stored(pool, event["id"]) is None

    async def test_secret_list_accepts_old_secret(
        self, settings: Settings, pool: asyncpg.Pool, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        event = checkout({"accountId": account.id, "credits": "2"})
        async with serve(replace(settings, payments_webhook_secret=f"whsec_new,{SECRET}")) as url:
            r = await post(client, url, event)
        assert r.status_code == 200, r.text


# --- Body checks ------------------------------------------------------------------------------------------------


class TestBody:
    async def test_too_large(self, api_url: str, client: httpx.AsyncClient) -> None:
        event = checkout({"accountId": "acct_x", "credits": "1", "pad": "x" * (64 * 1024)})
        r = await post(client, api_url, event)
        assert r.status_code == 413
        assert error_code(r) == "payload_too_large"

    async def test_too_large_chunked(self, api_url: str, client: httpx.AsyncClient) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(70):
                yield b" " * 1024

        r = await client.post(
            api_url + "/v1/webhooks/payments", content=chunks(), headers={"Stripe-Signature": sign(b"", SECRET)}
        )
        assert r.status_code == 413

    @pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b'{"a": NaN}', b'{"a": 1e999}', b"\xff"])
    async def test_invalid_json(self, body: bytes, api_url: str, client: httpx.AsyncClient) -> None:
        r = await post(client, api_url, body)
        assert r.status_code == 400, r.text
        assert error_code(r) == "invalid_json"

    async def test_event_without_id(self, api_url: str, client: httpx.AsyncClient) -> None:
        r = await post(client, api_url, {"type": "checkout.session.completed"})
        assert r.status_code == 422
        assert error_code(r) == "validation_error"

    async def test_nul_character_is_refused_not_a_500(self, api_url: str, client: httpx.AsyncClient) -> None:
        r = await post(client, api_url, {"id": new_id(), "type": "x.y", "data": {"s": "a\u0000b"}})
        assert r.status_code == 422, r.text


# --- Purchases --------------------------------------------------------------------------------------------------


class TestPurchase:
    async def test_grants_once(
        self, api_url: str, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account(credits=10)
        event = checkout({"accountId": account.id, "credits": "250"})
        first = await post(client, api_url, event)
        assert first.status_code == 200, first.text
        assert first.json()["ok"] is True
        assert first.json()["applied"] is True
        assert first.json()["eventId"] == event["id"]
        again = await post(client, api_url, event)
        assert again.status_code == 200
        assert again.json()["applied"] is False
        assert await balance(pool, account.id) == 260
        [entry] = await entries(pool, account.id, "purchase")
        assert (entry["amount"], entry["event_id"], entry["idempotency_key"]) == (
            250,
            event["id"],
            f"evt:{event['id']}",
        )
        row = await stored(pool, event["id"])
        assert row is not None
        assert (row["status"], row["account_id"], row["attempts"]) == ("applied", account.id, 1)

    async def test_same_event_20_times_concurrently_grants_once(
        self, api_url: str, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        event = checkout({"accountId": account.id, "credits": "100"})
        body = json.dumps(event).encode()
        header = sign(body, SECRET)
        responses = await asyncio.gather(*(post(client, api_url, body, header=header) for _ in range(20)))
        assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
        assert sum(r.json()["applied"] for r in responses) == 1
        assert len(await entries(pool, account.id, "purchase")) == 1
        assert await balance(pool, account.id) == 100

    async def test_external_id_names_the_account(
        self, api_url: str, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        ext = "cus_" + uuid.uuid4().hex[:10]
        account, _ = await make_account(external_id=ext)
        r = await post(client, api_url, checkout({"externalId": ext, "credits": "40"}))
        assert r.status_code == 200, r.text
        assert await balance(pool, account.id) == 40

    @pytest.mark.parametrize("credits", ["abc", "0", "-5", "1.5", "", "99999999999999999999", None])
    async def test_bad_credits_kept_pending(
        self,
        credits: str | None,
        api_url: str,
        client: httpx.AsyncClient,
        pool: asyncpg.Pool,
        make_account: MakeAccount,
    ) -> None:
        account, _ = await make_account()
        meta: dict[str, Any] = {"accountId": account.id}
        if credits is not None:
            meta["credits"] = credits
        event = checkout(meta)
        r = await post(client, api_url, event)
        assert r.status_code == 422, r.text
        assert error_code(r) == "event_not_applied"
        assert r.json()["error"]["eventId"] == event["id"]
        row = await stored(pool, event["id"])
        assert row is not None
        assert row["status"] == "pending"
        assert "metadata.credits" in row["detail"]
        assert row["account_id"] == account.id  # so that the audit can say whose event is stuck
        assert row["payload"] == event
        assert await balance(pool, account.id) == 0

    async def test_unpaid_checkout_waits_for_async_payment(
        self, api_url: str, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        completed = checkout({"accountId": account.id, "credits": "30"}, payment_status="unpaid")
        r = await post(client, api_url, completed)
        assert r.status_code == 200, r.text
        assert r.json()["ignored"] is True
        assert await balance(pool, account.id) == 0
        succeeded = {**completed, "id": new_id(), "type": "checkout.session.async_payment_succeeded"}
        r = await post(client, api_url, succeeded)
        assert r.status_code == 200, r.text
        assert r.json()["applied"] is True
        assert await balance(pool, account.id) == 30


# --- Subscriptions ----------------------------------------------------------------------------------------------


class TestSubscription:
    async def test_invoice_paid_sets_tier_and_allocates(
        self,
        api_url: str,
        client: httpx.AsyncClient,
        pool: asyncpg.Pool,
        make_account: MakeAccount,
        pricing: Pricing,
    ) -> None:
        account, _ = await make_account()
        r = await post(client, api_url, invoice({"accountId": account.id, "tier": "pro"}, 1_700_000_000))
        assert r.status_code == 200, r.text
        assert r.json()["credited"] == pricing.tiers["pro"].monthly_credits
        tier = await pool.fetchval("SELECT tier FROM accounts WHERE id = $1", account.id)
        assert tier == "pro"
        [entry] = await entries(pool, account.id, "subscription")
        assert entry["amount"] == pricing.tiers["pro"].monthly_credits

    async def test_two_events_one_period_allocate_once(
        self,
        api_url: str,
        client: httpx.AsyncClient,
        pool: asyncpg.Pool,
        make_account: MakeAccount,
        pricing: Pricing,
    ) -> None:
        account, _ = await make_account()
        meta = {"accountId": account.id, "tier": "pro"}
        first = await post(client, api_url, invoice(meta, 1_700_000_000))
        second = await post(client, api_url, invoice(meta, "1700000000"))  # another id, same period
        assert (first.status_code, second.status_code) == (200, 200), second.text
        assert second.json()["credited"] == 0
        assert "already allocated" in second.json()["detail"]
        assert len(await entries(pool, account.id, "subscription")) == 1
        assert await balance(pool, account.id) == pricing.tiers["pro"].monthly_credits

    async def test_concurrent_events_one_period_allocate_once(
        self,
        api_url: str,
        client: httpx.AsyncClient,
        pool: asyncpg.Pool,
        make_account: MakeAccount,
        pricing: Pricing,
    ) -> None:
        account, _ = await make_account()
        meta = {"accountId": account.id, "tier": "pro_plus"}
        responses = await asyncio.gather(*(post(client, api_url, invoice(meta, 1_710_000_000)) for _ in range(10)))
        assert [r.status_code for r in responses] == [200] * 10
        assert sum(r.json()["credited"] for r in responses) == pricing.tiers["pro_plus"].monthly_credits
        assert len(await entries(pool, account.id, "subscription")) == 1

    async def test_late_old_period_does_not_undo_newer_tier(
        self,
        api_url: str,
        client: httpx.AsyncClient,
        pool: asyncpg.Pool,
        make_account: MakeAccount,
        pricing: Pricing,
    ) -> None:
        account, _ = await make_account()
        newer = await post(client, api_url, invoice({"accountId": account.id, "tier": "pro_plus"}, 1_702_600_000))
        older = await post(client, api_url, invoice({"accountId": account.id, "tier": "pro"}, 1_700_000_000))
        assert (newer.status_code, older.status_code) == (200, 200)
        assert await pool.fetchval("SELECT tier FROM accounts WHERE id = $1", account.id) == "pro_plus"
        paid = pricing.tiers["pro_plus"].monthly_credits + pricing.tiers["pro"].monthly_credits
        assert await balance(pool, account.id) == paid  # the older period was paid for: it still allocates

    async def test_subscription_metadata_from_subscription_details(
        self, api_url: str, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        event = invoice({}, 1_700_000_000)
        event["data"]["object"]["subscription_details"] = {"metadata": {"accountId": account.id, "tier": "pro"}}
        r = await post(client, api_url, event)
        assert r.status_code == 200, r.text
        assert await pool.fetchval("SELECT tier FROM accounts WHERE id = $1", account.id) == "pro"

    @pytest.mark.parametrize(
        ("meta", "period", "why"),
        [
            ({"tier": "gold"}, 1_700_000_000, "unknown tier"),
            ({}, 1_700_000_000, "metadata.tier is missing"),
            ({"tier": "pro"}, None, "period_start"),
            ({"tier": "pro"}, "soon", "period_start"),
            ({"tier": "pro"}, 10**30, "period_start"),
        ],
    )
    async def test_bad_invoice_kept_pending(
        self,
        meta: dict[str, Any],
        period: Any,
        why: str,
        api_url: str,
        client: httpx.AsyncClient,
        pool: asyncpg.Pool,
        make_account: MakeAccount,
    ) -> None:
        account, _ = await make_account()
        event = invoice({"accountId": account.id, **meta}, period)
        r = await post(client, api_url, event)
        assert r.status_code == 422, r.text
        assert why in r.json()["error"]["detail"]
        assert await pool.fetchval("SELECT tier FROM accounts WHERE id = $1", account.id) == "free"


# --- Not applicable yet, and the ways it gets applied later -------------------------------------------------------


class TestUnapplied:
    async def test_unknown_account_then_resend_applies(
        self, api_url: str, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        ext = "cus_" + uuid.uuid4().hex[:10]
        event = checkout({"externalId": ext, "credits": "60"})
        r = await post(client, api_url, event)
        assert r.status_code == 422, r.text
        assert error_code(r) == "event_not_applied"
        assert ext in r.json()["error"]["message"]
        problems = [p for p in await audit.check(pool, 30) if p.eventId == event["id"]]
        assert [p.kind for p in problems] == ["unapplied_event"]
        assert ext in problems[0].detail

        account, _ = await make_account(external_id=ext)
        r = await post(client, api_url, event)
        assert r.status_code == 200, r.text
        assert r.json()["applied"] is True
        assert await balance(pool, account.id) == 60
        row = await stored(pool, event["id"])
        assert row is not None
        assert (row["status"], row["attempts"], row["detail"]) == ("applied", 2, None)
        assert not [p for p in await audit.check(pool, 30) if p.eventId == event["id"]]

    async def test_audit_fix_reapplies(
        self,
        api_url: str,
        client: httpx.AsyncClient,
        pool: asyncpg.Pool,
        make_account: MakeAccount,
        pricing: Pricing,
    ) -> None:
        ext = "cus_" + uuid.uuid4().hex[:10]
        event = invoice({"externalId": ext, "tier": "pro"}, 1_700_000_000)
        assert (await post(client, api_url, event)).status_code == 422
        # Still not applicable: the fixer reports nothing done and the problem stays.
        report = await audit.audit(pool, 30, payments.fixers(pricing))
        assert event["id"] in {p.eventId for p in report.problems}
        assert not [f for f in report.fixed if event["id"] in f]

        account, _ = await make_account(external_id=ext)
        report = await audit.audit(pool, 30, payments.fixers(pricing))
        assert [f for f in report.fixed if event["id"] in f]
        assert event["id"] not in {p.eventId for p in report.problems}
        assert await balance(pool, account.id) == pricing.tiers["pro"].monthly_credits
        assert await pool.fetchval("SELECT tier FROM accounts WHERE id = $1", account.id) == "pro"
        # The sender's retry after the fix is a repeat.
        r = await post(client, api_url, event)
        assert r.status_code == 200
        assert r.json()["applied"] is False

    async def test_reapply_pending(
        self,
        api_url: str,
        client: httpx.AsyncClient,
        pool: asyncpg.Pool,
        make_account: MakeAccount,
        pricing: Pricing,
    ) -> None:
        ext = "cus_" + uuid.uuid4().hex[:10]
        event = checkout({"accountId": ext, "credits": "9"})  # accountId may carry an externalId too
        assert (await post(client, api_url, event)).status_code == 422
        account, _ = await make_account(external_id=ext)
        assert event["id"] in await payments.reapply_pending(pool, pricing)
        assert event["id"] not in await payments.reapply_pending(pool, pricing)
        assert await balance(pool, account.id) == 9

    async def test_admin_apply_and_list(
        self, api_url: str, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        ext = "cus_" + uuid.uuid4().hex[:10]
        event = checkout({"externalId": ext, "credits": "11"})
        assert (await post(client, api_url, event)).status_code == 422
        apply_url = f"{api_url}/v1/admin/payments/events/{event['id']}/apply"

        assert (await client.post(apply_url)).status_code == 401
        assert (await client.post(apply_url, headers={"Authorization": "Bearer nope"})).status_code == 401
        r = await client.post(apply_url, headers=ADMIN)
        assert r.status_code == 422
        assert error_code(r) == "event_not_applied"

        listing = await client.get(f"{api_url}/v1/admin/payments/events?status=pending&limit=200", headers=ADMIN)
        assert listing.status_code == 200
        assert event["id"] in {e["eventId"] for e in listing.json()["items"]}
        one = await client.get(f"{api_url}/v1/admin/payments/events/{event['id']}", headers=ADMIN)
        assert one.json()["payload"] == event

        account, _ = await make_account(external_id=ext)
        r = await client.post(apply_url, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert (r.json()["applied"], r.json()["credited"]) == (True, 11)
        r = await client.post(apply_url, headers=ADMIN)
        assert (r.status_code, r.json()["applied"]) == (200, False)
        assert await balance(pool, account.id) == 11

        missing = await client.post(f"{api_url}/v1/admin/payments/events/evt_nope/apply", headers=ADMIN)
        assert missing.status_code == 404
        bad = await client.get(f"{api_url}/v1/admin/payments/events?status=weird", headers=ADMIN)
        assert bad.status_code == 422

    async def test_admin_disabled_without_token(self, settings: Settings, client: httpx.AsyncClient) -> None:
        async with serve(replace(settings, admin_token="")) as url:
            r = await client.post(f"{url}/v1/admin/payments/events/evt_x/apply", headers=ADMIN)
            listing = await client.get(f"{url}/v1/admin/payments/events", headers=ADMIN)
        assert (r.status_code, error_code(r)) == (403, "forbidden")
        assert listing.status_code == 403

    async def test_listing_pages(self, api_url: str, client: httpx.AsyncClient) -> None:
        mine = []
        for _ in range(3):
            event = checkout({"externalId": "nobody", "credits": "1"})
            assert (await post(client, api_url, event)).status_code == 422
            mine.append(event["id"])
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(2):  # newest first: the three just stored fill the first two pages of two
            params = {"status": "pending", "limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await client.get(f"{api_url}/v1/admin/payments/events", params=params, headers=ADMIN)).json()
            assert len(page["items"]) == 2
            seen += [e["eventId"] for e in page["items"]]
            cursor = page["nextCursor"]
            assert cursor is not None
        assert len(set(seen)) == 4
        assert seen[:3] == mine[::-1]


class TestOtherTypes:
    async def test_other_type_ignored_and_stored(
        self, api_url: str, client: httpx.AsyncClient, pool: asyncpg.Pool
    ) -> None:
        event: dict[str, Any] = {"id": new_id(), "type": "customer.created", "data": {"object": {"id": "cus_1"}}}
        r = await post(client, api_url, event)
        assert r.status_code == 200, r.text
        assert (r.json()["ok"], r.json()["ignored"]) == (True, True)
        row = await stored(pool, event["id"])
        assert row is not None
        assert row["status"] == "ignored"
        again = await post(client, api_url, event)
        assert (again.status_code, again.json()["ignored"]) == (200, True)


class TestProcess:
    @pytest.mark.slow
    async def test_creditq_api_process_applies_signed_purchase(
        self, procs: Processes, pool: asyncpg.Pool, make_account: MakeAccount, client: httpx.AsyncClient
    ) -> None:
        """The same flow through a real `creditq api` process, configured from the environment only."""
        account, _ = await make_account()
        api = procs.api()
        event = checkout({"accountId": account.id, "credits": "21"})
        r = await post(client, api.url, event)
        assert r.status_code == 200, r.text
        assert r.json()["applied"] is True
        unsigned = await post(client, api.url, event, signed=False)
        assert (unsigned.status_code, error_code(unsigned)) == (400, "invalid_signature")
        assert await balance(pool, account.id) == 21
