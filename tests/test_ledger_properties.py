"""Property test: random sequences of money operations against a simple model, every invariant after every step.

Runs on the real Postgres through the real SQL functions. The model is a few dicts and each account's lots; the
database must agree with it after each step (balances, helds, and every lot's remaining credits in spend order),
and the audit must find nothing. Operations: grants (some with an expiry, some already past it), adjustments,
holds, captures and releases, transfers (which carry expiry along), the sweep's expiry (which never takes held
credits) and take-backs (a refund or dispute, which may leave a debt).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shared.errors import IdempotencyConflict, InsufficientCredits
from shared.ledger import accounts, audit, money

ACCOUNTS = 3
amounts = st.integers(min_value=1, max_value=40)
keys = st.sampled_from([f"k{i}" for i in range(6)])  # few keys, so repeats happen often
PAST = datetime(2000, 1, 1, tzinfo=UTC)  # due: the next expire() takes what is not held
# PAST often, so that due lots meet holds before the next expire() (the case where held credits must survive).
EXPIRIES = st.sampled_from([None, PAST, PAST, datetime(2100, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)])


@dataclass
class ModelLot:
    seq: int
    expires_at: datetime | None
    granted: int
    remaining: int

    def order(self) -> tuple[bool, datetime, int]:
        """Spend order: soonest expiry first, never-expiring last, then oldest."""
        return (self.expires_at is None, self.expires_at or PAST, self.seq)


class LedgerMachine(RuleBasedStateMachine):
    """The model: balances, helds, holds and the idempotency keys used so far."""

    db_url: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.run(asyncpg.connect(self.db_url))
        self.ids: list[str] = []
        self.balance: dict[str, int] = {}
        self.held: dict[str, int] = {}
        # id → (account, amount, status, captured). Drawn from in insertion order, never sorted: the ids are random,
        # and a replayed example must draw the same holds (else hypothesis reports a flaky strategy).
        self.holds: dict[str, tuple[str, int, str, int]] = {}
        self.grant_keys: dict[tuple[str, str], int] = {}
        self.transfer_keys: dict[tuple[str, str], tuple[str, int]] = {}
        self.lots: dict[str, list[ModelLot]] = {}
        self.seq = 0

    # --- the lot model: what migrations/007_money_over_time.sql says, in plain Python ---

    def add_lot(self, a: str, amount: int, before: int, expires_at: datetime | None) -> None:
        """A credit of ``amount`` when the balance was ``before``: a debt is paid first."""
        self.seq += 1
        keep = max(before + amount, 0) - max(before, 0)
        self.lots[a].append(ModelLot(self.seq, expires_at, amount, keep))

    def spend(self, a: str, amount: int, skip: int) -> list[tuple[datetime | None, int]]:
        """Take ``amount`` in spend order after the first ``skip`` credits; the pieces taken."""
        pieces, upto = [], 0
        for lot in sorted((x for x in self.lots[a] if x.remaining > 0), key=ModelLot.order):
            start, upto = upto, upto + lot.remaining
            take = min(upto, skip + amount) - max(start, skip)
            if take > 0:
                lot.remaining -= take
                pieces.append((lot.expires_at, take))
        return pieces

    def expire_model(self, a: str) -> int:
        """The sweep: the part of the due lots beyond the held credits."""
        taken, upto = 0, 0
        for lot in sorted((x for x in self.lots[a] if x.remaining > 0 and x.expires_at == PAST), key=ModelLot.order):
            start, upto = upto, upto + lot.remaining
            take = upto - max(start, self.held[a])
            if take > 0:
                lot.remaining -= take
                taken += take
        return taken

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.conn.close())
        self.loop.close()

    def available(self, a: str) -> int:
        return self.balance[a] - self.held[a]

    @initialize()
    def make_accounts(self) -> None:
        for _ in range(ACCOUNTS):
            account, _, _ = self.run(accounts.create_account(self.conn))
            self.ids.append(account.id)
            self.balance[account.id] = 0
            self.held[account.id] = 0
            self.lots[account.id] = []

    @rule(
        i=st.integers(0, ACCOUNTS - 1),
        amount=st.integers(-30, 60).filter(bool),
        key=st.none() | keys,
        expires_at=EXPIRIES,
    )
    def credit(self, i: int, amount: int, key: str | None, expires_at: datetime | None) -> None:
        a = self.ids[i]
        known = self.grant_keys.get((a, key)) if key else None
        expires_at = expires_at if amount > 0 else None
        try:
            self.run(money.credit(self.conn, a, amount, "prop", key, expires_at=expires_at))
        except IdempotencyConflict:
            assert known is not None and known != amount
            return
        except InsufficientCredits:
            assert known is None and amount < 0 and self.available(a) < -amount
            return
        if known is not None:
            assert known == amount  # a repeat: nothing moves
            return
        assert amount > 0 or self.available(a) >= -amount
        if amount > 0:
            self.add_lot(a, amount, self.balance[a], expires_at)
        else:
            self.spend(a, -amount, self.held[a])
        self.balance[a] += amount
        if key:
            self.grant_keys[(a, key)] = amount

    @rule(i=st.integers(0, ACCOUNTS - 1), amount=amounts)
    def hold(self, i: int, amount: int) -> None:
        a = self.ids[i]
        hold_id = "h" + uuid.uuid4().hex
        try:
            self.run(money.hold(self.conn, a, hold_id, amount))
        except InsufficientCredits:
            assert self.available(a) < amount
            return
        assert self.available(a) >= amount
        self.held[a] += amount
        self.holds[hold_id] = (a, amount, "held", 0)

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data())
    def repeat_hold(self, data: st.DataObject) -> None:
        hold_id = data.draw(st.sampled_from(list(self.holds)))
        a, amount, _, _ = self.holds[hold_id]
        self.run(money.hold(self.conn, a, hold_id, amount))  # idempotent: nothing moves

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data(), how=st.sampled_from(["full", "partial", "release"]))
    def settle(self, data: st.DataObject, how: str) -> None:
        """Settle any hold, open or not: settle-after-settle must be a no-op showing the first outcome."""
        hold_id = data.draw(st.sampled_from(list(self.holds)))
        a, amount, status, captured = self.holds[hold_id]
        take = {"full": amount, "release": 0}[how] if how != "partial" else data.draw(st.integers(1, amount))
        if how == "release":
            row = self.run(money.release(self.conn, hold_id))
        else:
            row = self.run(money.capture(self.conn, hold_id, take))
        if status != "held":
            assert (row["status"], row["captured"]) == (status, captured)
            return
        self.held[a] -= amount
        self.spend(a, take, 0)
        self.balance[a] -= take
        self.holds[hold_id] = (a, amount, "captured" if take else "released", take)
        assert (row["status"], row["captured"]) == self.holds[hold_id][2:]

    @rule(i=st.integers(0, ACCOUNTS - 1), j=st.integers(0, ACCOUNTS - 1), amount=amounts, key=st.none() | keys)
    def transfer(self, i: int, j: int, amount: int, key: str | None) -> None:
        if i == j:
            return
        src, dst = self.ids[i], self.ids[j]
        request = f"{dst}:{amount}"
        known = self.transfer_keys.get((src, key)) if key else None
        try:
            self.run(money.transfer(self.conn, src, dst, amount, None, key, request))
        except IdempotencyConflict:
            assert known is not None and known != (dst, amount)
            return
        except InsufficientCredits:
            assert known is None and self.available(src) < amount
            return
        if known is not None:
            assert known == (dst, amount)
            return
        assert self.available(src) >= amount
        by_expiry: dict[datetime | None, int] = {}
        for expires_at, taken in self.spend(src, amount, self.held[src]):
            by_expiry[expires_at] = by_expiry.get(expires_at, 0) + taken
        before = self.balance[dst]
        for expires_at in sorted(by_expiry, key=lambda e: (e is None, e or PAST)):
            self.add_lot(dst, by_expiry[expires_at], before, expires_at)
            before += by_expiry[expires_at]
        self.balance[src] -= amount
        self.balance[dst] += amount
        if key:
            self.transfer_keys[(src, key)] = (dst, amount)

    @rule()
    def expire(self) -> None:
        """The sweep's expiry (what the worker runs every CREDITQ_SWEEP_SECONDS)."""
        self.run(money.expire_lots(self.conn))
        for a in self.ids:
            self.balance[a] -= self.expire_model(a)

    @rule(i=st.integers(0, ACCOUNTS - 1), amount=amounts)
    def hold_then_expire(self, i: int, amount: int) -> None:
        """A hold and at once the sweep: the held credits of due lots must survive it."""
        self.hold(i, amount)
        self.expire()

    @rule(i=st.integers(0, ACCOUNTS - 1), amount=amounts, j=st.integers(0, ACCOUNTS - 1), moved=amounts)
    def hold_then_transfer(self, i: int, amount: int, j: int, moved: int) -> None:
        """A hold and at once a transfer from the same account: the transfer must spend past the held credits."""
        self.hold(i, amount)
        self.transfer(i, j, moved, None)

    @rule(i=st.integers(0, ACCOUNTS - 1), amount=st.integers(1, 60))
    def take_back(self, i: int, amount: int) -> None:
        """A refund or dispute: may take more than is left, leaving a debt (available < 0)."""
        a = self.ids[i]
        self.run(self.conn.execute("SELECT cq_take_back($1, 'refund', $2, NULL, 'prop', NULL)", a, amount))
        self.spend(a, amount, 0)
        self.balance[a] -= amount

    @invariant()
    def database_matches_model(self) -> None:
        if not self.ids:
            return
        rows = self.run(self.conn.fetch("SELECT id, balance, held, owing FROM accounts WHERE id = ANY($1)", self.ids))
        for r in rows:
            a = r["id"]
            assert (r["balance"], r["held"]) == (self.balance[a], self.held[a])
            assert r["held"] >= 0
            # Available below zero only as a take-back's debt, and the flag says exactly when.
            assert r["owing"] == (r["balance"] < r["held"])
            lots = self.run(
                self.conn.fetch(
                    "SELECT expires_at, granted, remaining FROM lots WHERE account_id = $1 "
                    "ORDER BY expires_at NULLS LAST, created_at, id",
                    a,
                )
            )
            model = sorted(self.lots[a], key=ModelLot.order)
            assert [(x["expires_at"], x["granted"], x["remaining"]) for x in lots] == [
                (m.expires_at, m.granted, m.remaining) for m in model
            ]
            assert sum(m.remaining for m in model) == max(self.balance[a], 0)

    @invariant()
    def audit_is_clean(self) -> None:
        if not self.ids:
            return
        problems = [p for p in self.run(audit.check(self.conn, 30)) if p.accountId in self.ids]
        assert problems == []


@pytest.mark.slow
def test_ledger_state_machine(database_url: str) -> None:
    """The module's own database, so that the audit after every step reads only this machine's rows."""
    LedgerMachine.db_url = database_url
    LedgerMachine.TestCase.settings = settings_profile
    LedgerMachine.TestCase().runTest()


settings_profile = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
