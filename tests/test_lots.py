"""Lots: grants that expire, the order credits are spent in, transfers that carry expiry along, and expiry by a
real worker's sweep (CREDITQ_SWEEP_SECONDS=2) that never takes held credits. Real Postgres, real HTTP, a real
``creditq worker`` process.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from shared.ledger import audit, money
from tests.apiserver import ADMIN, Api, bearer, error_of
from tests.conftest import MakeAccount, Processes

SOON = datetime(2050, 1, 1, tzinfo=UTC)
LATER = datetime(2060, 1, 1, tzinfo=UTC)


async def grant(api: Api, account_id: str, amount: int, expires_at: datetime | None = None) -> dict[str, object]:
    body: dict[str, object] = {"amount": amount, "reason": "test grant"}
    if expires_at is not None:
        body["expiresAt"] = expires_at.isoformat()
    r = await api.client.post(f"/v1/admin/accounts/{account_id}/credits", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    out: dict[str, object] = r.json()
    return out


def remaining(lots: list[money.Lot]) -> list[tuple[datetime | None, int]]:
    return [(lot.expires_at, lot.remaining) for lot in lots]


async def assert_clean(pool: asyncpg.Pool, *account_ids: str) -> None:
    assert [p for p in await audit.check(pool, 30) if p.accountId in account_ids] == []


class TestGrants:
    async def test_grant_with_expiry_is_a_lot_listed_in_spend_order(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=7)  # the opening grant never expires
        out = await grant(api, account.id, 10, LATER)
        entry = out["entry"]
        assert isinstance(entry, dict)
        assert entry["kind"] == "grant" and entry["lotId"].startswith("lot_")
        await grant(api, account.id, 5, SOON)
        mine = (await api.client.get("/v1/account/lots", headers=bearer(key))).json()["items"]
        assert [(i["kind"], i["granted"], i["remaining"], i["expiresAt"]) for i in mine] == [
            ("grant", 5, 5, SOON.isoformat()),
            ("grant", 10, 10, LATER.isoformat()),
            ("grant", 7, 7, None),
        ]
        assert mine[1]["lotId"] == entry["lotId"]
        admin = (await api.client.get(f"/v1/admin/accounts/{account.id}/lots", headers=ADMIN)).json()["items"]
        assert admin == mine
        view = (await api.client.get("/v1/account", headers=bearer(key))).json()
        assert view["expiringNext"] == {"credits": 5, "expiresAt": SOON.isoformat()}
        assert view["owed"] == 0
        await assert_clean(pool, account.id)

    @pytest.mark.parametrize(
        ("amount", "expires"),
        [
            (5, "2001-01-01T00:00:00Z"),  # past
            (5, "soon"),
            (5, 12),
            (-5, "2100-01-01T00:00:00Z"),  # only a positive amount can expire
            (5, "9999-12-31T23:59:59-05:00"),  # past year 9999 in UTC
            (5, "2500-01-01T00:00:00Z"),  # beyond a century
        ],
    )
    async def test_bad_expiry_is_422_and_changes_nothing(
        self, amount: int, expires: object, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account(credits=10)
        r = await api.client.post(
            f"/v1/admin/accounts/{account.id}/credits",
            json={"amount": amount, "reason": "x", "expiresAt": expires},
            headers=ADMIN,
        )
        error = error_of(r, 422, "validation_error")
        assert any(d.get("field") == "expiresAt" for d in error["details"])
        assert await pool.fetchval("SELECT balance FROM accounts WHERE id = $1", account.id) == 10

    async def test_lots_need_a_key(self, api: Api) -> None:
        error_of(await api.client.get("/v1/account/lots"), 401, "unauthenticated")
        error_of(await api.client.get("/v1/admin/accounts/acct_nope/lots", headers=ADMIN), 404, "not_found")


class TestSpending:
    async def test_capture_spends_the_soonest_expiring_first(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account(credits=10)
        await grant(api, account.id, 10, LATER)
        await grant(api, account.id, 10, SOON)
        hold_id = "h_" + uuid.uuid4().hex
        await money.hold(pool, account.id, hold_id, 15)
        await money.capture(pool, hold_id)
        assert remaining(await money.lots(pool, account.id, include_spent=True)) == [
            (SOON, 0),
            (LATER, 5),
            (None, 10),
        ]
        url = f"/v1/admin/accounts/{account.id}/lots"
        assert [i["remaining"] for i in (await api.client.get(url, headers=ADMIN)).json()["items"]] == [5, 10]
        every = (await api.client.get(url, params={"all": "true"}, headers=ADMIN)).json()["items"]
        assert [i["remaining"] for i in every] == [0, 5, 10]
        error_of(await api.client.get(url, params={"all": "yes"}, headers=ADMIN), 422, "validation_error")
        await assert_clean(pool, account.id)

    async def test_transfer_carries_expiry_and_spares_the_held_credits(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        sender, key = await make_account(credits=10)
        recipient, _ = await make_account()
        await grant(api, sender.id, 10, SOON)
        await grant(api, sender.id, 10, LATER)
        await money.hold(pool, sender.id, "h_" + uuid.uuid4().hex, 4)  # held: the first 4 of the SOON lot
        r = await api.client.post(
            "/v1/transfers", json={"toAccountId": recipient.id, "amount": 20}, headers=bearer(key)
        )
        assert r.status_code == 201, r.text
        assert remaining(await money.lots(pool, sender.id)) == [(SOON, 4), (None, 6)]
        got = await money.lots(pool, recipient.id)
        assert [(lot.kind, lot.expires_at, lot.remaining) for lot in got] == [
            ("transfer_in", SOON, 6),
            ("transfer_in", LATER, 10),
            ("transfer_in", None, 4),
        ]
        await assert_clean(pool, sender.id, recipient.id)


class TestTransferExistence:
    async def test_a_sender_who_cannot_pay_learns_nothing_about_the_recipient(
        self, api: Api, make_account: MakeAccount
    ) -> None:
        _, key = await make_account(credits=5)
        real, _ = await make_account(external_id="real-" + uuid.uuid4().hex[:8])
        for to in (real.id, real.external_id, "acct_" + uuid.uuid4().hex, "nobody-" + uuid.uuid4().hex[:6]):
            r = await api.client.post("/v1/transfers", json={"toAccountId": to, "amount": 6}, headers=bearer(key))
            error_of(r, 402, "insufficient_credits")
        r = await api.client.post("/v1/transfers", json={"toAccountId": "nobody", "amount": 5}, headers=bearer(key))
        error_of(r, 404, "not_found")

    async def test_a_suspended_sender_is_403_before_the_recipient_lookup(
        self, api: Api, make_account: MakeAccount
    ) -> None:
        sender, key = await make_account(credits=5)
        await api.client.patch(f"/v1/admin/accounts/{sender.id}", json={"status": "suspended"}, headers=ADMIN)
        r = await api.client.post("/v1/transfers", json={"toAccountId": "nobody", "amount": 1}, headers=bearer(key))
        error_of(r, 403, "forbidden")


@pytest.mark.slow
async def test_the_sweep_expires_lots_but_never_held_credits(
    procs: Processes, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    """A real worker sweeps every 2 s. A expires what is not held; B's expiring credits are all held and never
    expire (its capture spends them once); C's expire whole; A's held part expires once its hold is released."""
    procs.worker()
    a, _ = await make_account(credits=5)
    b, _ = await make_account()
    c, _ = await make_account()
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    lot_a = (await grant(api, a.id, 10, expires))["entry"]
    await grant(api, b.id, 10, expires)
    lot_c = (await grant(api, c.id, 6, expires))["entry"]
    assert isinstance(lot_a, dict) and isinstance(lot_c, dict)
    hold_a, hold_b = "h_" + uuid.uuid4().hex, "h_" + uuid.uuid4().hex
    await money.hold(pool, a.id, hold_a, 8)
    await money.hold(pool, b.id, hold_b, 10)

    async def expirations(account_id: str) -> list[tuple[int, str]]:
        rows = await pool.fetch(
            "SELECT amount, lot_id FROM ledger_entries WHERE account_id = $1 AND kind = 'expiration' ORDER BY id",
            account_id,
        )
        return [(r["amount"], r["lot_id"]) for r in rows]

    async def wait_for(account_id: str, n: int, seconds: float) -> list[tuple[int, str]]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = await expirations(account_id)
            if len(found) >= n:
                return found
            await asyncio.sleep(0.2)
        return await expirations(account_id)

    # Within a sweep interval (2 s, plus the lock's tick) of the expiry.
    sweep_budget = 1.5 + 2 + 1.5
    assert await wait_for(c.id, 1, sweep_budget) == [(-6, lot_c["lotId"])]
    assert await wait_for(a.id, 1, 1) == [(-2, lot_a["lotId"])]
    assert await expirations(b.id) == []
    assert await pool.fetchval("SELECT balance FROM accounts WHERE id = $1", a.id) == 13

    await money.release(pool, hold_a)
    await money.capture(pool, hold_b)
    assert await wait_for(a.id, 2, 2 + 1.5) == [(-2, lot_a["lotId"]), (-8, lot_a["lotId"])]
    await asyncio.sleep(0.5)
    assert await expirations(b.id) == []  # spent by the capture, never charged twice
    balances = dict(await pool.fetch("SELECT id, balance FROM accounts WHERE id = ANY($1)", [a.id, b.id, c.id]))
    assert balances == {a.id: 5, b.id: 0, c.id: 0}
    await assert_clean(pool, a.id, b.id, c.id)


class TestOperatorView:
    async def test_metrics_and_page_show_expiring_lots_debt_and_pending_events(
        self, api: Api, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        expiring, _ = await make_account()
        await grant(api, expiring.id, 9, datetime.now(UTC) + timedelta(days=2))
        debtor, _ = await make_account(credits=10)
        await pool.execute("SELECT cq_take_back($1, 'refund', 25, NULL, 'test', NULL)", debtor.id)
        text = (await api.client.get("/metrics")).text
        values = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith(("creditq_accounts_in_debt", "creditq_credits_owed", "creditq_credits_expiring_soon"))
        }
        assert values["creditq_accounts_in_debt"] >= 1
        assert values["creditq_credits_owed"] >= 15
        assert values["creditq_credits_expiring_soon"] >= 9
        assert "creditq_payment_events_pending" in text
        page = (await api.client.get("/admin", headers=ADMIN)).text
        assert 'id="money"' in page and 'id="accounts-in-debt"' in page and 'id="credits-expiring"' in page
        assert f'class="debtor" data-account="{debtor.id}" data-value="15"' in page
        await money.credit(pool, debtor.id, 15, "pays the debt", None)
        page = (await api.client.get("/admin", headers=ADMIN)).text
        assert f'data-account="{debtor.id}"' not in page
        await assert_clean(pool, expiring.id, debtor.id)
