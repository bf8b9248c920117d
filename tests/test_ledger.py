"""The ledger's money operations against the real Postgres: idempotency, races, deadlocks, the audit."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from shared.errors import IdempotencyConflict, InsufficientCredits, InvalidInput, NotFound
from shared.ledger import audit, money, tasks
from shared.pricing import Model
from tests.conftest import MakeAccount


async def problems_for(pool: asyncpg.Pool, *account_ids: str) -> list[audit.Problem]:
    return [p for p in await audit.check(pool, 30) if p.accountId in account_ids]


async def balance(pool: asyncpg.Pool, account_id: str) -> tuple[int, int]:
    r = await pool.fetchrow("SELECT balance, held FROM accounts WHERE id = $1", account_id)
    assert r is not None
    return r["balance"], r["held"]


class TestCredit:
    async def test_grant_is_idempotent_by_key(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        account, _ = await make_account()
        first = await money.credit(pool, account.id, 25, "goodwill", "k1")
        again = await money.credit(pool, account.id, 25, "goodwill", "k1")
        assert first["id"] == again["id"]
        assert await balance(pool, account.id) == (25, 0)

    async def test_same_key_other_amount_conflicts(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        account, _ = await make_account()
        await money.credit(pool, account.id, 5, None, "k")
        with pytest.raises(IdempotencyConflict):
            await money.credit(pool, account.id, 6, None, "k")

    async def test_adjustment_never_takes_available_below_zero(
        self, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account(credits=10)
        await money.hold(pool, account.id, f"h-{uuid.uuid4()}", 6)
        with pytest.raises(InsufficientCredits) as e:
            await money.credit(pool, account.id, -5, "correction", "adj")
        assert (e.value.required, e.value.available) == (5, 4)
        entry = await money.credit(pool, account.id, -4, "correction", "adj2")
        assert entry["kind"] == "adjustment"
        assert await balance(pool, account.id) == (6, 6)

    async def test_zero_and_unknown_account_are_refused(self, pool: asyncpg.Pool) -> None:
        with pytest.raises(NotFound):
            await money.credit(pool, "acct_missing", 5, None, None)
        with pytest.raises(InvalidInput):
            await money.credit(pool, "acct_missing", 0, None, None)

    async def test_concurrent_repeats_of_one_key_grant_once(
        self, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        entries = await asyncio.gather(*(money.credit(pool, account.id, 7, None, "same") for _ in range(20)))
        assert len({e["id"] for e in entries}) == 1
        assert await balance(pool, account.id) == (7, 0)


class TestHoldAndSettle:
    async def test_capture_partial_releases_the_rest(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        account, _ = await make_account(credits=20)
        await money.hold(pool, account.id, "hp-" + account.id, 10)
        assert await balance(pool, account.id) == (20, 10)
        h = await money.capture(pool, "hp-" + account.id, 4)
        assert (h["status"], h["captured"]) == ("captured", 4)
        assert await balance(pool, account.id) == (16, 0)
        # A second settle, of either kind, is a no-op that shows the first outcome.
        again = await money.release(pool, "hp-" + account.id)
        assert (again["status"], again["captured"]) == ("captured", 4)
        assert await balance(pool, account.id) == (16, 0)
        assert await problems_for(pool, account.id) == []

    async def test_hold_refused_when_short(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        account, _ = await make_account(credits=3)
        with pytest.raises(InsufficientCredits):
            await money.hold(pool, account.id, "short-" + account.id, 4)
        assert await balance(pool, account.id) == (3, 0)
        assert await pool.fetchval("SELECT count(*) FROM holds WHERE account_id = $1", account.id) == 0

    async def test_capture_outside_hold_is_refused(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        account, _ = await make_account(credits=5)
        await money.hold(pool, account.id, "x-" + account.id, 5)
        with pytest.raises(InvalidInput):
            await money.capture(pool, "x-" + account.id, 6)
        with pytest.raises(NotFound):
            await money.capture(pool, "nope-" + account.id, 1)

    async def test_race_200_holds_on_37_credits(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        """200 concurrent holds of 1 on an account that can afford 37: exactly 37 succeed."""
        account, _ = await make_account(credits=37)

        async def one(i: int) -> bool:
            try:
                await money.hold(pool, account.id, f"race-{account.id}-{i}", 1)
            except InsufficientCredits:
                return False
            return True

        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert sum(results) == 37
        assert await balance(pool, account.id) == (37, 37)
        assert await problems_for(pool, account.id) == []


class TestTransfer:
    async def test_transfer_moves_and_is_idempotent(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        a, _ = await make_account(credits=10)
        b, _ = await make_account()
        t1 = await money.transfer(pool, a.id, b.id, 4, "gift", "t-1", "h")
        t2 = await money.transfer(pool, a.id, b.id, 4, "gift", "t-1", "h")
        assert t1["id"] == t2["id"]
        assert await balance(pool, a.id) == (6, 0)
        assert await balance(pool, b.id) == (4, 0)
        with pytest.raises(IdempotencyConflict):
            await money.transfer(pool, a.id, b.id, 5, "gift", "t-1", "other")

    async def test_refusals(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        a, _ = await make_account(credits=3)
        b, _ = await make_account()
        with pytest.raises(InsufficientCredits):
            await money.transfer(pool, a.id, b.id, 4, None, None)
        with pytest.raises(InvalidInput):
            await money.transfer(pool, a.id, a.id, 1, None, None)
        with pytest.raises(NotFound):
            await money.transfer(pool, a.id, "acct_missing", 1, None, None)
        with pytest.raises(NotFound):
            await money.transfer(pool, "acct_missing", a.id, 1, None, None)

    async def test_opposite_transfers_do_not_deadlock(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        a, _ = await make_account(credits=1000)
        b, _ = await make_account(credits=1000)

        async def move(src: str, dst: str, n: int) -> None:
            await money.transfer(pool, src, dst, 1 + n % 3, None, None)

        await asyncio.wait_for(
            asyncio.gather(*(move(a.id, b.id, i) if i % 2 else move(b.id, a.id, i) for i in range(300))),
            timeout=60,
        )
        (ba, _), (bb, _) = await balance(pool, a.id), await balance(pool, b.id)
        assert ba + bb == 2000
        assert await problems_for(pool, a.id, b.id) == []


class TestAudit:
    async def test_finds_a_balance_corrupted_by_hand(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        account, _ = await make_account(credits=10)
        await pool.execute("UPDATE accounts SET balance = balance + 5 WHERE id = $1", account.id)
        try:
            found = await problems_for(pool, account.id)
            # The entries and the lots both disagree with the balance edited by hand.
            assert [p.kind for p in found] == ["balance_mismatch", "lots_mismatch"]
            assert "15" in found[0].detail and "10" in found[0].detail
            assert "15" in found[1].detail and "10" in found[1].detail
        finally:
            await pool.execute("UPDATE accounts SET balance = balance - 5 WHERE id = $1", account.id)
        assert await problems_for(pool, account.id) == []

    async def test_finds_held_that_no_hold_explains(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        account, _ = await make_account(credits=10)
        await pool.execute("UPDATE accounts SET held = 3 WHERE id = $1", account.id)
        try:
            assert {p.kind for p in await problems_for(pool, account.id)} == {"held_mismatch"}
        finally:
            await pool.execute("UPDATE accounts SET held = 0 WHERE id = $1", account.id)

    async def test_ledger_is_append_only(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        account, _ = await make_account(credits=10)
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await pool.execute("UPDATE ledger_entries SET amount = 99 WHERE account_id = $1", account.id)
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await pool.execute("DELETE FROM ledger_entries WHERE account_id = $1", account.id)

    async def test_schema_forbids_held_above_balance(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        account, _ = await make_account(credits=10)
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute("UPDATE accounts SET held = 11 WHERE id = $1", account.id)


class TestGroupCommit:
    """Submits of one account coalesced into one statement and one commit, exactly as if one by one."""

    @staticmethod
    def _model(cost: int) -> Model:
        return Model("bench/model", "image", "jobs", cost, 300, 5)

    async def test_batch_admits_in_order_while_credit_lasts(
        self, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account(credits=10)
        reqs = [tasks.SubmitRequest(self._model(c), {"prompt": "p"}, None, None, None) for c in (6, 6, 4)]
        results = await tasks.submit_batch(pool, account.id, reqs)
        assert isinstance(results[0], tasks.Submitted) and results[0].inserted
        assert isinstance(results[1], InsufficientCredits)
        assert (results[1].required, results[1].available) == (6, 4)
        assert isinstance(results[2], tasks.Submitted) and results[2].inserted
        assert await balance(pool, account.id) == (10, 10)
        assert await problems_for(pool, account.id) == []

    async def test_idempotency_holds_inside_one_batch(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        account, _ = await make_account(credits=100)
        m = self._model(5)
        reqs = [
            tasks.SubmitRequest(m, {"prompt": "a"}, None, "k", "h1"),
            tasks.SubmitRequest(m, {"prompt": "a"}, None, "k", "h1"),
            tasks.SubmitRequest(m, {"prompt": "b"}, None, "k", "h2"),
        ]
        first, repeat, other = await tasks.submit_batch(pool, account.id, reqs)
        assert isinstance(first, tasks.Submitted) and first.inserted
        assert isinstance(repeat, tasks.Submitted) and not repeat.inserted
        assert repeat.task["id"] == first.task["id"]
        assert isinstance(other, IdempotencyConflict)
        assert await balance(pool, account.id) == (100, 5)

    async def test_200_racing_submits_on_a_hot_account(self, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
        """200 concurrent submits of cost 4 on 148 credits through the batcher: exactly 37 tasks, and far fewer
        commits than tasks (rows of one transaction share their xmin)."""
        account, _ = await make_account(credits=148)
        batcher = tasks.SubmitBatcher()
        m = self._model(4)

        async def one(i: int) -> bool:
            try:
                await batcher.submit(pool, account.id, tasks.SubmitRequest(m, {"prompt": str(i)}, None, None, None))
            except InsufficientCredits:
                return False
            return True

        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert sum(results) == 37
        assert await balance(pool, account.id) == (148, 148)
        commits = await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM tasks WHERE account_id = $1", account.id)
        assert commits < 37
        assert await problems_for(pool, account.id) == []
